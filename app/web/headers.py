"""Security headers on every response the app sends, whichever door made it.

Every response gets `X-Content-Type-Options: nosniff`, so a browser never reads a JSON body (or
a document's text echoed in it) as HTML or script. Every HTML page (the dashboard, /docs, the
GraphQL explorer, any page added later) also gets a policy against framing (clickjacking:
`frame-ancestors 'none'` and, for old browsers, `X-Frame-Options: DENY`) and
`Referrer-Policy: no-referrer`. A page that sets its own Content-Security-Policy (the dashboard's
is strict) keeps it, with `frame-ancestors 'none'` added when it lacks one.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: For HTML pages without a policy of their own: nothing that would break a page's scripts or
#: styles, only what no page here needs (framing, <base>, plugins).
DEFAULT_HTML_CSP = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_security_headers(headers: MutableHeaders) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if not headers.get("content-type", "").lower().startswith("text/html"):
        return
    policy = headers.get("content-security-policy")
    if policy is None:
        headers["Content-Security-Policy"] = DEFAULT_HTML_CSP
    elif "frame-ancestors" not in policy:
        headers["Content-Security-Policy"] = f"{policy.rstrip('; ')}; frame-ancestors 'none'"
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
