"""Tenant tokens (API.md section 12): short JWTs a customer's backend mints offline from a key
with the `search` scope, for a browser to search with.

Verification is in two steps, so that a forged token costs no database call and a valid one
costs the same single read as a plain key:

1. The token is checked on its own: its length and shape, its header (`HS256` only), its claims'
   types, its `exp` (required, at most 24 h ahead) and then its signature, against the signing
   secrets of the keys its `kid` names. A key's secret never changes, so the secrets are kept
   per prefix (`SECRETS_TTL_S`, and `MISSING_TTL_S` for a prefix no key has): a flood of tokens
   with a bad signature, a bad claim or a malformed body never reaches the database.
2. A token with a good signature reads its key as it is now (`accounts.token_key`, one hop, as
   a plain key's lookup), so disabling or deleting the key voids its tokens at once, on every
   process; the key's restrictions bound the token's.

Every failure raises the same `Unauthorized` as a wrong key.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from pydantic_core import PydanticCustomError

from app.errors import Unauthorized
from app.models import TOKEN_SCOPES, utcnow
from app.models.search import check_metadata_filter
from app.services import accounts
from app.services.runtime import Principal, Runtime

#: A token longer than this is refused before it is parsed.
MAX_TOKEN_BYTES = 4096
#: How far ahead a token's `exp` may be.
MAX_LIFETIME = timedelta(hours=24)
#: Clock skew tolerated between the minting backend and this server.
LEEWAY_S = 30
#: How long the signing secrets of a prefix's keys are kept (they never change; a new key whose
#: prefix collides with a kept one waits this long for its tokens to work).
SECRETS_TTL_S = 60.0
#: How long a prefix that no key has is remembered: a key made since waits at most this long.
MISSING_TTL_S = 5.0
_CACHE_MAX = 10_000
#: How many verified tokens a process keeps (each at most `MAX_TOKEN_BYTES`): only tokens
#: signed with a key's secret get in, so only their minters can fill it.
VERIFIED_MAX = 4096
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_PREFIX_RE = re.compile(r"^pa_live_[A-Za-z0-9]{4}$")
_SUB_MAX = 128
_METADATA_MAX_KEYS = 32


def looks_like_token(value: str) -> bool:
    return len(value) <= MAX_TOKEN_BYTES and _JWT_RE.match(value) is not None


async def authenticate(*, runtime: Runtime, token: str) -> Principal:
    verified = runtime.verified_tokens.get(token)
    if verified is None or verified.wanted.exp + LEEWAY_S < time.time():
        verified = await _verify(runtime, token)
    row = await accounts.token_key(runtime=runtime, key_id=verified.key_id)
    # The same id with another secret: the key was deleted and its id given to a new one.
    if row is None or not hmac.compare_digest(row["signing_secret"] or "", verified.secret):
        raise Unauthorized()
    return await _principal(runtime, row, verified.wanted)


async def _verify(runtime: Runtime, token: str) -> _Verified:
    """Step 1: the token on its own, without a database call once its prefix is known. A
    token that passes is kept (`VERIFIED_MAX`): a browser sends the same one with every
    request, and the next ones skip the parsing and the HMAC."""
    runtime.verified_tokens.pop(token, None)
    if not looks_like_token(token):
        raise Unauthorized()
    try:
        unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized() from exc
    header, claims = unverified["header"], unverified["payload"]
    if header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise Unauthorized()
    kid = claims.get("kid")
    if not isinstance(kid, str) or not _PREFIX_RE.match(kid):
        raise Unauthorized()
    wanted = _claims(claims)
    for key_id, secret in await _secrets(runtime, kid):
        try:
            jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "kid"], "verify_exp": True},
                leeway=LEEWAY_S,
            )
        except jwt.PyJWTError:
            continue
        verified = _Verified(key_id=key_id, secret=secret, wanted=wanted)
        if len(runtime.verified_tokens) >= VERIFIED_MAX:
            runtime.verified_tokens.clear()
        runtime.verified_tokens[token] = verified
        return verified
    raise Unauthorized()


@dataclass(frozen=True, slots=True)
class _Wanted:
    """What a token's claims ask for, checked for type and size but not yet against its key."""

    exp: float
    sub: str | None
    persona_ids: frozenset[str] | None
    metadata: dict[str, Any]


def _claims(claims: Mapping[str, Any]) -> _Wanted:
    """The claims beyond the signature, refused before any key is read."""
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Unauthorized()
    if exp > time.time() + MAX_LIFETIME.total_seconds() + LEEWAY_S:
        raise Unauthorized()
    sub = claims.get("sub")
    if sub is not None and (
        not isinstance(sub, str) or not 1 <= len(sub) <= _SUB_MAX or not _unicode(sub)
    ):
        raise Unauthorized()
    personas: frozenset[str] | None = None
    if "persona_ids" in claims:
        listed = claims["persona_ids"]
        if (
            not isinstance(listed, list)
            or not listed
            or len(listed) > accounts.MAX_RESTRICTION_ITEMS
            or not all(isinstance(p, str) and accounts.PERSONA_ID_RE.match(p) for p in listed)
        ):
            raise Unauthorized()
        personas = frozenset(listed)
    metadata = claims.get("metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > _METADATA_MAX_KEYS:
        raise Unauthorized()
    try:
        # The search's own rule for a metadata filter: a token's is forced onto every search,
        # so one the search would refuse (or could never match) is a wrong token, not a 422.
        check_metadata_filter(metadata)
    except PydanticCustomError as exc:
        raise Unauthorized() from exc
    return _Wanted(exp=exp, sub=sub, persona_ids=personas, metadata=metadata)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature holds: the key that signed it, and what it asks for."""

    key_id: int
    secret: str
    wanted: _Wanted


def _unicode(text: str) -> bool:
    """No lone surrogates (JSON's `\\ud800` escapes make them): such a `sub` could not be a
    rate-limit key in Redis."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def _secrets(runtime: Runtime, prefix: str) -> list[tuple[int, str]]:
    now = time.monotonic()
    cached = runtime.token_keys.get(prefix)
    if cached is not None and now - cached[0] < (SECRETS_TTL_S if cached[1] else MISSING_TTL_S):
        return cached[1]
    found = await accounts.signing_secrets(runtime=runtime, prefix=prefix)
    if len(runtime.token_keys) >= _CACHE_MAX:
        runtime.token_keys.clear()
    runtime.token_keys[prefix] = (now, found)
    return found


async def _principal(runtime: Runtime, row: Mapping[str, Any], wanted: _Wanted) -> Principal:
    if row["status"] != "active":
        raise Unauthorized()
    if row["expires_at"] is not None and row["expires_at"] <= utcnow():
        raise Unauthorized()
    key = await accounts.principal_of(runtime, row)
    if "search" not in key.scopes:
        raise Unauthorized()
    personas = key.persona_ids
    if wanted.persona_ids is not None:
        if personas is not None and not wanted.persona_ids <= personas:
            raise Unauthorized()  # never wider than its key
        personas = wanted.persona_ids
    return Principal(
        user_id=key.user_id,
        email=key.email,
        plan=key.plan,
        key_id=key.key_id,
        scopes=key.scopes & TOKEN_SCOPES,
        persona_ids=personas,
        allowed_origins=key.allowed_origins,
        rate_limit=key.rate_limit,
        token_sub=wanted.sub,
        metadata=wanted.metadata,
        via_token=True,
    )
