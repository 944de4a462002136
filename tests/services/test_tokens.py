"""Tenant tokens (API.md section 12) through REST: minted offline, verified statelessly, never
more than their key; every malformed or forged token is the one 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from tests.conftest import AppFactory, assert_problem, client_for, new_key
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


def _signed(header: dict[str, Any], payload: Any, secret: str) -> str:
    """A JWT with any header and payload, HMAC-SHA256-signed with `secret` whatever the
    header says: the algorithm-confusion and claim-type cases PyJWT's encoder would not make."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _forgeries(
    prefix: str, secret: str, persona: str, other_prefix: str, other_secret: str
) -> st.SearchStrategy[str]:
    """Tokens wrong in one way or several, each claim wrong in every way (type, value, size,
    absence): each must be a 401 (or a 403 from scope), never a 500, never more than the key.
    `other_*` is another user's search key: its secret and its prefix are wrong here too."""
    now = int(time.time())
    good: dict[str, Any] = {"kid": prefix, "exp": now + 600, "sub": "u"}
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
        | st.integers(min_value=2**63, max_value=2**80) | st.just("\ud800")
    )  # fmt: skip
    json_values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )  # fmt: skip
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    claims = st.fixed_dictionaries(
        {},
        optional={
            "kid": json_values | st.sampled_from(
                [prefix, prefix[:-1] + "Z", prefix.upper(), "pa_live_", other_prefix, prefix + " "]
            ),
            "exp": json_values | st.sampled_from(
                [now - 120, now + 90_000, now + 10**9, float("inf"), float("-inf"), float("nan"),
                 str(now + 600), True, [now + 600], now + 600.5]
            ),
            "sub": json_values | st.sampled_from(["x" * 500, "", "\ud800", "\x00"]),
            "persona_ids": json_values | st.sampled_from(
                [[persona, "per_OTHER"], [], [persona] * 101, ["\ud800"], [persona, 1], "per_x",
                 ["per_" + "x" * 70]]
            ),
            "metadata": json_values | st.dictionaries(st.text(max_size=5), json_values, max_size=40)
            | st.sampled_from(
                [{"x": 2**70}, {"x": float("nan")}, {"x": float("inf")}, {"\ud800": 1},
                 {"x": "\ud800"}, {"x": deep}, {"x": "y" * 9000}, {str(i): i for i in range(33)}]
            ),
            "iat": json_values | st.just(now + 10**6),
            "nbf": json_values | st.just(now + 10**6),
        },
    )  # fmt: skip
    dropped = st.sets(st.sampled_from(sorted(good)))

    def payload(c: dict[str, Any], drop: set[str]) -> dict[str, Any]:
        return {**{k: v for k, v in good.items() if k not in drop}, **c}

    # With the right secret, so that only the claims are wrong (the cases most worth running).
    rightly_signed = st.builds(
        lambda c, d: _signed({"alg": "HS256"}, payload(c, d), secret), claims, dropped
    )
    wrongly_signed = st.builds(
        lambda c, d, s: jwt.encode(payload(c, d), s, algorithm="HS256"),
        claims,
        dropped,
        st.sampled_from([secret + "x", "x" * 43, other_secret, secret[:-1]]),
    )
    # The other key's secret with its own prefix is a valid token of another user's key: it
    # must reach nothing of this user's (it searches the other user's empty account).
    other_alg = st.builds(
        lambda c, alg: jwt.encode({**good, **c}, secret * 2, algorithm=alg),
        claims,
        st.sampled_from(["HS384", "HS512"]),
    )
    headers = st.fixed_dictionaries(
        {
            "alg": st.sampled_from(
                ["none", "None", "NONE", "RS256", "ES256", "PS256", "HS384", "hs256", "", "HS256 "]
            )
            | json_values
        },
        optional={
            "typ": json_values,
            "kid": json_values,
            "crit": json_values,
            "jku": st.just("https://evil.example/k"),
        },
    )
    confused = st.builds(lambda h, c: _signed(h, {**good, **c}, secret), headers, claims)
    unsigned = st.builds(lambda h, c: f"{b64(h)}.{b64({**good, **c})}.", headers, claims)
    odd_payloads = st.builds(
        lambda p: _signed({"alg": "HS256"}, p, secret),
        json_values | st.just([good]) | st.just("kid"),
    )
    valid = jwt.encode(good, secret, algorithm="HS256")
    tampered = st.builds(
        lambda i, ch: valid[:i] + ch + valid[i + 1 :],
        st.integers(0, len(valid) - 1),
        st.sampled_from("AbZ09-_."),
    )
    huge = st.sampled_from(
        [
            jwt.encode({**good, "pad": "x" * 5000}, secret, algorithm="HS256"),
            _signed({"alg": "HS256", "pad": "x" * 5000}, good, secret),
            "a" * 100_000,
            "e30." * 2000 + "x",
        ]
    )
    junk = st.text(max_size=60)
    return st.one_of(
        rightly_signed, rightly_signed, rightly_signed, wrongly_signed, other_alg, confused,
        unsigned, odd_payloads, tampered, huge, junk,
    )  # fmt: skip


async def test_forged_and_malformed_tokens_never_pass_their_key(make_app: AppFactory) -> None:
    # Failed authentications are not slowed to 429 here, so that every token gets its answer.
    app = await make_app(auth_failures_per_minute=100_000)
    a, b = await seed(app)
    key = await search_key(app, scopes=["search"], persona_ids=[a])
    assert key.signing_secret
    runtime: Runtime = app.state.runtime
    await accounts.create_user(runtime=runtime, email="other@example.com", plan_id="unlimited")
    other = await accounts.create_key(runtime=runtime, email="other@example.com", scopes=["search"])
    assert other.signing_secret
    seen: list[str] = []

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_forgeries(key.prefix, key.signing_secret, a, other.prefix, other.signing_secret))
    def check(token: str) -> None:
        seen.append(token)

    check()
    search = {"query": "gardening", "mode": "keyword"}
    gql = {"query": '{ search(query: "gardening", mode: KEYWORD) { results { externalId } } }'}
    passed = 0
    async with client_for(app) as api:
        for token in seen:
            if any(ord(c) > 127 or c in "\r\n\x00" for c in token) or token != token.strip():
                continue  # not a header value at all
            h = {"X-Api-Key": token}
            r = await api.post(SEARCH, json=search, headers=h)
            assert r.status_code in (200, 401, 403), (token, r.text)
            if r.status_code == 200:
                passed += 1
                # Whatever got through is a token of a real key: persona a's documents only.
                assert {hit["external_id"] for hit in r.json()["results"]} <= {"doc-a"}
            else:
                assert r.json()["code"] in ("auth.unauthorized", "auth.insufficient_scope")
            g = await api.post("/graphql", json=gql, headers=h)
            assert g.status_code in (200, 401), (token, g.text)
            if g.status_code == 200 and g.json().get("data"):
                found = {hit["externalId"] for hit in g.json()["data"]["search"]["results"]}
                assert found <= {"doc-a"}, token
            for refused in (
                await api.get("/api/knowledge/docs", headers=h),
                await api.get(f"/api/personas/{b}", headers=h),
                await api.put(
                    "/api/knowledge/docs/by-external-id/x", json={"content": "x"}, headers=h
                ),
                await api.post("/api/personas", json={"name": "x"}, headers=h),
                await api.get("/api/subscription/usage", headers=h),
            ):
                assert refused.status_code in (401, 403), (token, refused.text)
    # The run is only worth something if some tokens got through to be bounded by their key.
    assert passed > 0
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


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"d": value}
    return value


#: Claims a key's own backend could sign by mistake (or a leaked secret on purpose): each is
#: refused as the one 401, before any search runs with it.
WRONG_CLAIMS: list[dict[str, Any]] = [
    {"metadata": {"x": 2**70}},
    {"metadata": {"x": float("nan")}},
    {"metadata": {"x": float("inf")}},
    {"metadata": {"\ud800": 1}},
    {"metadata": {"x": "\ud800"}},
    {"metadata": {"x": _deep(40)}},
    {"metadata": {"x": "y" * 9000}},
    {"metadata": {str(i): i for i in range(33)}},
    {"metadata": []},
    {"sub": "\ud800"},
    {"sub": ""},
    {"sub": "x" * 129},
    {"sub": 7},
    {"persona_ids": ["\ud800"]},
    {"persona_ids": ["not a persona id"]},
    {"persona_ids": ["per_" + "x" * 70]},
    {"persona_ids": "per_x"},
    {"persona_ids": []},
    {"persona_ids": [1]},
    {"exp": float("nan")},
    {"exp": float("-inf")},
    {"exp": "9999999999"},
    {"exp": True},
    {"iat": "yesterday"},
    {"nbf": int(time.time()) + 10**6},
]


async def test_a_rightly_signed_token_with_wrong_claims_is_the_one_401(
    make_app: AppFactory,
) -> None:
    app = await make_app(auth_failures_per_minute=100_000)  # every case its own 401, no 429
    await seed(app)
    key = await search_key(app, scopes=["search", "personas:read"])  # no persona restriction
    assert key.signing_secret
    good = {"kid": key.prefix, "exp": int(time.time()) + 600}
    async with client_for(app) as api:
        for wrong in WRONG_CLAIMS:
            token = _signed({"alg": "HS256", "typ": "JWT"}, {**good, **wrong}, key.signing_secret)
            h = {"X-Api-Key": token}
            r = await api.post(SEARCH, json={"query": "gardening"}, headers=h)
            assert_problem(r, 401, "auth.unauthorized")
            g = await api.post(
                "/graphql", json={"query": '{ search(query: "x") { mode } }'}, headers=h
            )
            assert g.status_code == 401, (wrong, g.text)
