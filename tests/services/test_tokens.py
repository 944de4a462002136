"""Tenant tokens (API.md section 12) through REST: minted offline, verified statelessly, never
more than their key; every malformed or forged token is the one 401."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event
from starlette.applications import Starlette

from app.client import Client
from app.services import accounts, tokens
from app.services.runtime import Runtime
from tests.conftest import assert_problem, client_for, new_key
from tests.rest.test_scopes import EMAIL, seed

pytestmark = pytest.mark.anyio
SEARCH = "/api/knowledge/search"


async def search_key(app: Starlette, **restrictions: Any) -> accounts.ApiKeyCreated:
    runtime: Runtime = app.state.runtime
    return await accounts.create_key(runtime=runtime, email=EMAIL, **restrictions)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_a_token_searches_within_its_claims_and_nothing_else(app: Starlette) -> None:
    a, b = await seed(app)
    key = await search_key(app, scopes=["search", "personas:read", "docs:read"], persona_ids=[a, b])
    assert key.signing_secret
    token = Client.mint_token(
        key=key.key, signing_secret=key.signing_secret, sub="user-1", persona_ids=[a]
    )
    for headers in ({"X-Api-Key": token}, {"Authorization": f"Bearer {token}"}):
        async with client_for(app, **headers) as api:
            r = await api.post(SEARCH, json={"query": "gardening", "mode": "keyword"})
            assert r.status_code == 200, r.text
            assert [h["external_id"] for h in r.json()["results"]] == ["doc-a"]
            assert (await api.get(f"/api/personas/{a}")).status_code == 200
            assert_problem(await api.get(f"/api/personas/{b}"), 403, "auth.insufficient_scope")
            # The key may read documents; its token may not.
            assert_problem(await api.get("/api/knowledge/docs"), 403, "auth.insufficient_scope")
            r = await api.post("/api/personas", json={"name": "x"})
            assert_problem(r, 403, "auth.insufficient_scope")


async def test_forced_metadata_narrows_every_search(app: Starlette) -> None:
    owner = await new_key(app, EMAIL, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": owner}) as api:
        items = [
            {"external_id": f"d-{t}", "content": "gardening notes", "metadata": {"tenant": t}}
            for t in ("t1", "t2")
        ]
        assert (await api.put("/api/knowledge/docs", json={"items": items})).status_code == 200
    key = await search_key(app, scopes=["search"])
    assert key.signing_secret
    token = tokens_for(key, metadata={"tenant": "t1"})
    async with client_for(app, **{"X-Api-Key": token}) as api:
        found = await api.post(SEARCH, json={"query": "gardening", "mode": "keyword"})
        assert [h["external_id"] for h in found.json()["results"]] == ["d-t1"]
        widen = await api.post(
            SEARCH, json={"query": "gardening", "mode": "keyword", "metadata": {"tenant": "t2"}}
        )
        assert widen.json()["results"] == []


def tokens_for(key: accounts.ApiKeyCreated, **claims: Any) -> str:
    assert key.signing_secret
    return Client.mint_token(key=key.key, signing_secret=key.signing_secret, **claims)


async def test_disabling_or_deleting_the_key_voids_its_tokens_at_once(app: Starlette) -> None:
    await new_key(app, EMAIL)
    runtime: Runtime = app.state.runtime
    for remove in ("disable", "delete"):
        key = await search_key(app, scopes=["search"])
        token = tokens_for(key)
        async with client_for(app, **{"X-Api-Key": token}) as api:
            assert (await api.post(SEARCH, json={"query": "x"})).status_code == 200
            if remove == "disable":
                await accounts.disable_key(runtime=runtime, prefix=key.prefix)
            else:
                await accounts.delete_key(runtime=runtime, prefix=key.prefix, email=EMAIL)
            # No cache to wait for: the very next request reads the key as it is now.
            assert_problem(await api.post(SEARCH, json={"query": "x"}), 401, "auth.unauthorized")


@asynccontextmanager
async def database_checkouts(runtime: Runtime) -> AsyncIterator[list[str]]:
    """Every connection taken from the app's engines (reads and writes, both engines' paths,
    the one-hop key lookup included) while the block runs. The request counts are flushed
    first, so the background flush has nothing to write meanwhile."""
    await runtime.requests.flush(runtime.db)
    taken: list[str] = []
    # PostgreSQL's reader is the writer with other options: one pool under both.
    pools = {
        id(e.sync_engine.pool): e.sync_engine.pool for e in (runtime.db.reader, runtime.db.writer)
    }

    def record(*_: object) -> None:
        taken.append("checkout")

    for pool in pools.values():
        event.listen(pool, "checkout", record)
    try:
        yield taken
    finally:
        for pool in pools.values():
            event.remove(pool, "checkout", record)


async def test_a_forged_token_costs_no_database_call(app: Starlette) -> None:
    a, _ = await seed(app)
    key = await search_key(app, scopes=["search"], persona_ids=[a])
    assert key.signing_secret
    runtime: Runtime = app.state.runtime
    now = int(time.time())
    good = {"kid": key.prefix, "exp": now + 600}
    valid = tokens_for(key)
    forged = [
        jwt.encode(good, key.signing_secret + "x", algorithm="HS256"),  # another secret
        valid[:-3] + ("AAA" if not valid.endswith("AAA") else "BBB"),  # tampered signature
        jwt.encode({**good, "exp": now + 90_000}, key.signing_secret, algorithm="HS256"),
        jwt.encode({**good, "persona_ids": "per_x"}, key.signing_secret, algorithm="HS256"),
        jwt.encode({"kid": key.prefix}, key.signing_secret, algorithm="HS256"),  # no exp
        jwt.encode(good, key.signing_secret * 2, algorithm="HS512"),
        f"{b64({'alg': 'none'})}.{b64(good)}.",
        jwt.encode({**good, "pad": "x" * 5000}, key.signing_secret, algorithm="HS256"),
        "e30." * 2000,
        "not a token at all",
    ]
    async with client_for(app) as api:
        # The first token of a prefix reads its keys' secrets once; a valid one reads its key.
        async with database_checkouts(runtime) as taken:
            ok = await api.post(SEARCH, json={"query": "x"}, headers={"X-Api-Key": valid})
        assert ok.status_code == 200, ok.text
        assert taken, "the valid token read its key"
        async with database_checkouts(runtime) as taken:
            for token in forged:
                r = await api.post(SEARCH, json={"query": "x"}, headers={"X-Api-Key": token})
                assert_problem(r, 401, "auth.unauthorized")
        assert taken == []
        # A prefix no key has is looked up once, then remembered for a while.
        stranger = jwt.encode({"kid": "pa_live_zzzz", "exp": now + 60}, "s" * 32, algorithm="HS256")
        async with database_checkouts(runtime) as taken:
            for _ in range(5):
                r = await api.post(SEARCH, json={"query": "x"}, headers={"X-Api-Key": stranger})
                assert_problem(r, 401, "auth.unauthorized")
        assert len(taken) == 1
        # The valid token still reads its key on every request: that is what voids it at once.
        async with database_checkouts(runtime) as taken:
            await api.post(SEARCH, json={"query": "x"}, headers={"X-Api-Key": valid})
        assert taken


def _forgeries(prefix: str, secret: str, persona: str) -> st.SearchStrategy[str]:
    """Tokens wrong in one way or several: each must be the one 401 (or a 403 from scope)."""
    now = int(time.time())
    good: dict[str, Any] = {"kid": prefix, "exp": now + 600, "sub": "u"}
    claim_values = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
        st.lists(st.text(max_size=12), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )  # fmt: skip
    claims = st.fixed_dictionaries(
        {},
        optional={
            "kid": st.one_of(
                claim_values, st.sampled_from([prefix, prefix[:-1] + "Z", "pa_live_"])
            ),
            "exp": st.one_of(claim_values, st.sampled_from([now - 120, now + 90_000, now + 10**9])),
            "sub": st.one_of(claim_values, st.just("x" * 500)),
            "persona_ids": st.one_of(claim_values, st.just([persona, "per_OTHER"]), st.just([])),
            "metadata": claim_values,
        },
    )
    signed = st.builds(
        lambda c, s: jwt.encode({**good, **c}, s, algorithm="HS256"),
        claims,
        st.sampled_from([secret, secret + "x", "x" * 43]),
    )
    other_alg = st.builds(
        lambda c, alg: jwt.encode({**good, **c}, secret * 2, algorithm=alg),
        claims,
        st.sampled_from(["HS384", "HS512"]),
    )
    unsigned = st.builds(
        lambda c, alg: f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64({**good, **c})}.",
        claims,
        st.sampled_from(["none", "None", "HS256"]),
    )
    valid = jwt.encode(good, secret, algorithm="HS256")
    tampered = st.builds(
        lambda i, ch: valid[:i] + ch + valid[i + 1 :],
        st.integers(0, len(valid) - 1),
        st.sampled_from("AbZ09-_."),
    )
    huge = st.just(jwt.encode({**good, "pad": "x" * 5000}, secret, algorithm="HS256"))
    junk = st.text(max_size=60)
    return st.one_of(signed, other_alg, unsigned, tampered, huge, junk)


async def test_forged_and_malformed_tokens_never_pass_their_key(app: Starlette) -> None:
    a, b = await seed(app)
    key = await search_key(app, scopes=["search"], persona_ids=[a])
    assert key.signing_secret
    runtime: Runtime = app.state.runtime
    seen: list[tuple[str, int]] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_forgeries(key.prefix, key.signing_secret, a))
    def check(token: str) -> None:
        seen.append((token, 0))

    check()
    async with client_for(app) as api:
        for token, _ in seen:
            if any(ord(c) > 127 or c in "\r\n\x00" for c in token):
                continue  # not a header value at all
            r = await api.post(
                SEARCH,
                json={"query": "gardening", "mode": "keyword"},
                headers={"X-Api-Key": token},
            )
            assert r.status_code in (200, 401, 403, 429), (token, r.text)
            if r.status_code == 200:
                # Whatever got through is the valid key's token: persona a's documents only.
                assert {h["external_id"] for h in r.json()["results"]} <= {"doc-a"}
            r2 = await api.get("/api/knowledge/docs", headers={"X-Api-Key": token})
            assert r2.status_code in (401, 403, 429), (token, r2.text)
            r3 = await api.get(f"/api/personas/{b}", headers={"X-Api-Key": token})
            assert r3.status_code in (401, 403, 429), (token, r3.text)
    assert runtime.token_keys  # looked up by prefix, and kept


async def test_every_auth_failure_has_the_same_body(app: Starlette) -> None:
    await new_key(app, EMAIL)
    key = await search_key(app, scopes=["search"])
    assert key.signing_secret
    now = int(time.time())
    bodies = []
    for token in (
        jwt.encode({"kid": key.prefix, "exp": now - 600}, key.signing_secret, algorithm="HS256"),
        jwt.encode({"kid": key.prefix, "exp": now + 90_000}, key.signing_secret, algorithm="HS256"),
        jwt.encode({"kid": key.prefix}, key.signing_secret, algorithm="HS256"),
        f"{b64({'alg': 'none'})}.{b64({'kid': key.prefix, 'exp': now + 60})}.",
        "pa_live_" + "x" * 40,
    ):
        async with client_for(app, **{"X-Api-Key": token}) as api:
            r = await api.post(SEARCH, json={"query": "x"})
        body = assert_problem(r, 401, "auth.unauthorized")
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    assert all(b == bodies[0] for b in bodies)


def test_token_size_is_bounded() -> None:
    assert not tokens.looks_like_token("a." * 3000 + "b")
