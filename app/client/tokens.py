"""Minting tenant tokens (API.md section 12), offline: no request to the server.

Your backend holds a key with the `search` scope and its signing secret; for each browser session
it mints a short-lived token for it, and the browser only ever holds that token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

#: The server refuses a token whose `exp` is further ahead than this.
MAX_EXPIRES_IN_S = 24 * 3600


def mint_token(
    *,
    key: str,
    signing_secret: str,
    expires_in: int = 3600,
    sub: str | None = None,
    persona_ids: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """A JWT (HS256) naming the key by its visible prefix (`kid`, its first 12 characters),
    valid for `expires_in` seconds (1..86400). `key` may be the full key or just its prefix."""
    if not 1 <= expires_in <= MAX_EXPIRES_IN_S:
        raise ValueError(f"expires_in must be 1..{MAX_EXPIRES_IN_S} seconds")
    claims: dict[str, Any] = {"kid": key[:12], "exp": int(time.time()) + expires_in}
    if sub is not None:
        claims["sub"] = sub
    if persona_ids is not None:
        claims["persona_ids"] = list(persona_ids)
    if metadata is not None:
        claims["metadata"] = dict(metadata)
    return jwt.encode(claims, signing_secret, algorithm="HS256")
