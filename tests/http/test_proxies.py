"""The client address behind trusted reverse proxies (app/http/proxies.py), and its setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.http.proxies import client_address, parse_address
from app.http.ratelimit import address_key
from app.settings import Settings, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # Without a trusted peer the header is never read.
        ("192.0.2.1", ["198.51.100.1"], "192.0.2.1"),
        ("192.0.2.1", [], "192.0.2.1"),
        # The right-most entry that is not a trusted proxy is the client...
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.1, 10.2.3.4"], "198.51.100.1"),
        # ...over several header lines, in order, with ports and IPv6 forms normalised.
        ("10.0.0.1", ["6.6.6.6", "198.51.100.1:4711"], "198.51.100.1"),
        ("10.0.0.1", ["[2001:DB8::1]:443"], "2001:db8::1"),
        ("10.0.0.1", ["2001:db8::1, 2001:db8:ffff::9"], "2001:db8::1"),
        ("::ffff:10.0.0.1", ["::ffff:198.51.100.1"], "198.51.100.1"),
        # Every hop trusted: the request began inside; the left-most entry is the client.
        ("127.0.0.1", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", [" , "], "127.0.0.1"),
        # An entry that is no address (written by the trusted proxy) is used as it stands.
        ("10.0.0.1", ["6.6.6.6, unknown"], "unknown"),
        ("10.0.0.1", ["x" * 500], "x" * 64),
        # No peer at all (a Unix socket).
        (None, ["198.51.100.1"], "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded_for: list[str], expected: str) -> None:
    assert client_address(peer, forwarded_for, TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.0.0.1", ["198.51.100.1"], ()) == "10.0.0.1"


def test_addresses_are_counted_per_ipv4_address_and_ipv6_64() -> None:
    assert address_key("198.51.100.1") == "198.51.100.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("unknown") == "unknown"
    assert parse_address("not an address") is None


def test_trusted_proxies_setting_is_checked_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.for_tests(tmp_path, trusted_proxies=["10.0.0.0/8", " 192.0.2.7 "])
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.7/32"]
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        Settings.for_tests(tmp_path, trusted_proxies=["10.0.0.0/33"])
    # From the environment it is a JSON list, as PERSONAIZER_CORS_ORIGINS is.
    monkeypatch.setenv("PERSONAIZER_TRUSTED_PROXIES", '["::1", "10.1.0.0/16"]')
    assert Settings().trusted_networks == parse_networks(["::1", "10.1.0.0/16"])
