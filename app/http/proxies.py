"""The client's address as seen through trusted reverse proxies.

Behind a reverse proxy every connection comes from the proxy, so a limit per peer address would
count all users together: one broken client would lock everyone out. Each proxy appends the
address it received the request from to `X-Forwarded-For`; everything to the left of that may
have been written by the client itself. So the header is believed only when the peer is a
trusted proxy, and read from the right: the first entry that is not a trusted proxy is the
client. Entries further left are never used, so a client cannot choose its own address.

Pure functions, no I/O; `app.settings` parses and validates the trusted set at start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TypeAlias

from app.settings import Network

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What a client without any address is counted as (a Unix socket, say).
UNKNOWN = "unknown"
#: An unparsable header entry is used as it stands (it was written by a trusted proxy), but
#: never at more than this length.
_MAX_ENTRY = 64


def parse_address(value: str) -> Address | None:
    """An address from a peer or header entry: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`.
    IPv4-mapped IPv6 addresses become IPv4, so a dual-stack socket counts one client once."""
    value = value.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client behind `peer`: the right-most `X-Forwarded-For` entry (all header lines in
    order) that is not a trusted proxy, when `peer` itself is one; otherwise `peer`."""
    if not peer:
        return UNKNOWN
    peer_address = parse_address(peer)
    canonical_peer = str(peer_address) if peer_address is not None else peer[:_MAX_ENTRY]
    if not _trusted(peer_address, trusted):
        return canonical_peer
    entries = [e.strip() for line in forwarded_for for e in line.split(",") if e.strip()]
    for entry in reversed(entries):
        address = parse_address(entry)
        if not _trusted(address, trusted):
            return str(address) if address is not None else entry[:_MAX_ENTRY]
    # Every hop is a trusted proxy: the request started inside the trusted network.
    if entries:
        first = parse_address(entries[0])
        return str(first) if first is not None else entries[0][:_MAX_ENTRY]
    return canonical_peer
