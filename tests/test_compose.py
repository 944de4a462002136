"""docs/deploy/compose.yaml, which cannot run here (no Docker): valid YAML whose services refer to
each other correctly, app containers with a /readyz health check, and a proxy that speaks TLS
(so production's `Secure` cookies work) to healthy app containers only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).parents[1] / "docs" / "deploy" / "compose.yaml"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text("utf-8"))
    return loaded


def test_services_refer_to_what_exists() -> None:
    compose = _compose()
    services: dict[str, Any] = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for other in depends:
            assert other in services, (name, other)
            if isinstance(depends, dict) and depends[other]["condition"] == "service_healthy":
                assert "healthcheck" in services[other], (name, other)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert "/" in source or source in compose["volumes"], (name, volume)
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], (name, config)


def test_apps_are_health_checked_on_readyz_and_proxied_over_tls() -> None:
    compose = _compose()
    services: dict[str, Any] = compose["services"]
    apps = [n for n, s in services.items() if "personaizer" in " ".join(s.get("command", []))]
    assert apps == ["app1", "app2"]
    for name in apps:
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "http://127.0.0.1:8000/readyz" in check, name
    proxy = services["proxy"]
    assert "443:443" in proxy["ports"]
    assert set(proxy["depends_on"]) == set(apps)
    caddyfile: str = compose["configs"]["caddyfile"]["content"]
    assert "tls internal" in caddyfile and "health_uri /readyz" in caddyfile
    assert re.findall(r"(\w+):8000", caddyfile) == apps
    # The site name is the host the app answers MCP for.
    allowed = services["app1"]["environment"]["PERSONAIZER_ALLOWED_HOSTS"]
    assert caddyfile.split()[0] in allowed
