"""The widget's backend: serves the page and mints each visitor a short tenant token.

This stands for your own backend (docs/frontends.md). It holds the prefix and the signing secret
of a key that may only search and read the persona (never the key itself: minting needs neither
the key nor a request to the PersonAIzer server), and gives the browser a token that is good for
a few minutes, for this one persona. Run it with the settings in the environment:

    WIDGET_KEY_PREFIX=pa_live_XXXX WIDGET_SIGNING_SECRET=... WIDGET_PERSONA_ID=per_... \\
    WIDGET_API_URL=http://127.0.0.1:8000 python3 examples/widget/mint.py --port 8100

and open http://127.0.0.1:8100/. Only the standard library and PyJWT (`pip install pyjwt`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt

HERE = Path(__file__).resolve().parent
#: The page's files; nothing else in the folder is served.
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/widget.js": ("widget.js", "text/javascript; charset=utf-8"),
    "/widget.css": ("widget.css", "text/css; charset=utf-8"),
}
#: The server refuses tokens that live longer than 24 h; a page needs minutes.
DEFAULT_TTL_S = 600
MAX_TTL_S = 24 * 3600
VISITOR_COOKIE = "widget_visitor"
_PREFIX = re.compile(r"^pa_live_[A-Za-z0-9]{4}")
_VISITOR = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@dataclass(frozen=True)
class Config:
    api_url: str
    persona_id: str
    key_prefix: str
    signing_secret: str
    ttl_s: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Config:
        missing = [
            name
            for name in ("WIDGET_KEY_PREFIX", "WIDGET_SIGNING_SECRET", "WIDGET_PERSONA_ID")
            if not env.get(name)
        ]
        if missing:
            raise ValueError(f"set {', '.join(missing)} (see examples/widget/README.md)")
        # The full key works too: only its visible prefix (the first 12 characters) is used.
        prefix = env["WIDGET_KEY_PREFIX"].strip()[:12]
        if not _PREFIX.match(prefix):
            raise ValueError(f"WIDGET_KEY_PREFIX {prefix!r} is not a key prefix (pa_live_XXXX)")
        api_url = env.get("WIDGET_API_URL", "http://127.0.0.1:8000").rstrip("/")
        if urlsplit(api_url).scheme not in ("http", "https"):
            raise ValueError(f"WIDGET_API_URL {api_url!r} is not an http(s) URL")
        ttl = int(env.get("WIDGET_TOKEN_TTL", DEFAULT_TTL_S))
        if not 60 <= ttl <= MAX_TTL_S:
            raise ValueError(f"WIDGET_TOKEN_TTL must be 60..{MAX_TTL_S} seconds")
        return cls(
            api_url, env["WIDGET_PERSONA_ID"].strip(), prefix, env["WIDGET_SIGNING_SECRET"], ttl
        )

    def mint(self, visitor: str) -> dict[str, Any]:
        """A token for this persona only, rate-limited per visitor (`sub`)."""
        expires_at = int(time.time()) + self.ttl_s
        claims = {
            "kid": self.key_prefix,
            "exp": expires_at,
            "sub": visitor,
            "persona_ids": [self.persona_id],
        }
        token = jwt.encode(claims, self.signing_secret, algorithm="HS256")
        return {
            "token": token,
            "expires_at": expires_at,
            "api_url": self.api_url,
            "persona_id": self.persona_id,
        }

    def content_security_policy(self) -> str:
        """The page may run only its own script and talk only to this backend and the API."""
        api = urlsplit(self.api_url)
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src 'self' {api.scheme}://{api.netloc}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )


class Handler(BaseHTTPRequestHandler):
    server_version = "widget-example"
    config: Config  # set on the subclass `serve` makes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path not in STATIC:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        name, content_type = STATIC[path]
        self._send(HTTPStatus.OK, (HERE / name).read_bytes(), content_type)

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/token":
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        # Your backend would check its own session here (who is this visitor, may they use the
        # widget?) before minting; this example trusts everyone who can open the page.
        visitor, is_new = self._visitor()
        body = json.dumps(self.config.mint(visitor)).encode()
        extra = {}
        if is_new:
            extra["Set-Cookie"] = (
                f"{VISITOR_COOKIE}={visitor}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
            )
        self._send(HTTPStatus.OK, body, "application/json", extra)

    def _visitor(self) -> tuple[str, bool]:
        """A random id per browser (a cookie), so each visitor has their own rate limit."""
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(VISITOR_COOKIE)
        except CookieError:
            morsel = None
        if morsel is not None and _VISITOR.match(morsel.value):
            return morsel.value, False
        return secrets.token_urlsafe(18), True

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # A token must not be kept by a cache; the page is tiny, so nothing is.
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", self.config.content_security_policy())
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request on stderr, without the token (it is never in the URL anyway).
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    try:
        config = Config.from_env(dict(os.environ))
    except ValueError as exc:
        print(f"mint.py: {exc}", file=sys.stderr)
        return 2
    handler = type("ConfiguredHandler", (Handler,), {"config": config})
    with ThreadingHTTPServer((args.host, args.port), handler) as httpd:
        print(
            f"widget on http://{args.host}:{args.port}/ (API {config.api_url}, "
            f"persona {config.persona_id}, key {config.key_prefix}…)",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
            httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
