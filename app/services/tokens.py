"""Tenant tokens (API.md section 12): short JWTs a customer's backend mints offline from a key
with the `search` scope, for a browser to search with.

Verification is stateless but for the key: the token names its key by prefix (`kid`); that key's
row (status, signing secret, restrictions) is read once and kept for `KEY_CACHE_S` seconds, so a
flood of forged tokens costs at most one lookup per prefix and per few seconds, and disabling or
deleting a key voids its tokens within those seconds on every process. Every failure raises the
same `Unauthorized` as a wrong key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import jwt

from app.errors import Unauthorized
from app.models import TOKEN_SCOPES, utcnow
from app.services import accounts
from app.services.runtime import Principal, Runtime

#: A token longer than this is refused before it is parsed.
MAX_TOKEN_BYTES = 4096
#: How far ahead a token's `exp` may be.
MAX_LIFETIME = timedelta(hours=24)
#: Clock skew tolerated between the minting backend and this server.
LEEWAY_S = 30
#: How long a key looked up by prefix is trusted: the delay before disabling it voids tokens.
KEY_CACHE_S = 5.0
_CACHE_MAX = 10_000
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_PREFIX_RE = re.compile(r"^pa_live_[A-Za-z0-9]{4}$")
_SUB_MAX = 128
_METADATA_MAX_KEYS = 32


def looks_like_token(value: str) -> bool:
    return len(value) <= MAX_TOKEN_BYTES and _JWT_RE.match(value) is not None


async def authenticate(*, runtime: Runtime, token: str) -> Principal:
    if not looks_like_token(token):
        raise Unauthorized()
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized() from exc
    if header.get("alg") != "HS256" or not isinstance(unverified, dict):
        raise Unauthorized()
    kid = unverified.get("kid")
    if not isinstance(kid, str) or not _PREFIX_RE.match(kid):
        raise Unauthorized()
    for row in await _keys(runtime, kid):
        secret = row["signing_secret"]
        if not secret or row["status"] != "active":
            continue
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "kid"], "verify_exp": True},
                leeway=LEEWAY_S,
            )
        except jwt.PyJWTError:
            continue
        return await _principal(runtime, row, claims)
    raise Unauthorized()


async def _keys(runtime: Runtime, prefix: str) -> list[Any]:
    now = time.monotonic()
    cached = runtime.token_keys.get(prefix)
    if cached is not None and now - cached[0] < KEY_CACHE_S:
        return cached[1]
    rows = await accounts.keys_by_prefix(runtime=runtime, prefix=prefix)
    if len(runtime.token_keys) >= _CACHE_MAX:
        runtime.token_keys.clear()
    runtime.token_keys[prefix] = (now, rows)
    return rows


async def _principal(
    runtime: Runtime, row: Mapping[str, Any], claims: Mapping[str, Any]
) -> Principal:
    now = utcnow()
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise Unauthorized()
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Unauthorized()
    if exp > now.timestamp() + MAX_LIFETIME.total_seconds() + LEEWAY_S:
        raise Unauthorized()
    key = await accounts.principal_of(runtime, row)
    scopes = key.scopes & TOKEN_SCOPES
    if "search" not in key.scopes:
        raise Unauthorized()
    sub = claims.get("sub")
    if sub is not None and (not isinstance(sub, str) or not 1 <= len(sub) <= _SUB_MAX):
        raise Unauthorized()
    personas = key.persona_ids
    if "persona_ids" in claims:
        wanted = claims["persona_ids"]
        if (
            not isinstance(wanted, list)
            or not wanted
            or len(wanted) > accounts.MAX_RESTRICTION_ITEMS
            or not all(isinstance(p, str) for p in wanted)
        ):
            raise Unauthorized()
        if personas is not None and not set(wanted) <= personas:
            raise Unauthorized()  # never wider than its key
        personas = frozenset(wanted)
    metadata = claims.get("metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > _METADATA_MAX_KEYS:
        raise Unauthorized()
    return Principal(
        user_id=key.user_id,
        email=key.email,
        plan=key.plan,
        key_id=key.key_id,
        scopes=scopes,
        persona_ids=personas,
        allowed_origins=key.allowed_origins,
        rate_limit=key.rate_limit,
        token_sub=sub,
        metadata=metadata,
        via_token=True,
    )
