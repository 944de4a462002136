"""Rate limits through HTTP (API.md section 8): per user and policy, a moving minute, headers on
every authenticated response; failed authentication limited per address; Redis shared."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config
from tests.support import servers

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
PERSONAS = "/api/personas"
RATELIMIT_RE = re.compile(r'^"(reads|writes|search)";r=(\d+);t=(\d+)$')
POLICY_RE = re.compile(r'^"(reads|writes|search)";q=(\d+);w=60$')


def small_plan(plan_id: str, writes: int, reads: int = 100) -> dict[str, Any]:
    return plan_config(
        plan_id, reads_per_minute=reads, writes_per_minute=writes, searches_per_minute=10
    )


def ratelimit(response: httpx.Response) -> tuple[str, int, int]:
    match = RATELIMIT_RE.match(response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    return match[1], int(match[2]), int(match[3])


def policy(response: httpx.Response) -> tuple[str, int]:
    match = POLICY_RE.match(response.headers["ratelimit-policy"])
    assert match, response.headers["ratelimit-policy"]
    return match[1], int(match[2])


def assert_refused(response: httpx.Response) -> None:
    assert_problem(response, 429, "limits.rate_exceeded")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    _, remaining, t = ratelimit(response)
    assert remaining == 0 and int(retry_after) >= t >= 1


def doc(external_id: str) -> str:
    return f"{DOCS}/by-external-id/{external_id}"


async def test_the_121st_write_is_the_first_refused(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        for i in range(120):
            r = await api.delete(doc(f"absent{i}"))  # cheap writes
            assert r.status_code == 204, (i, r.text)
            assert policy(r) == ("writes", 120)
            assert ratelimit(r)[:2] == ("writes", 119 - i)
        r = await api.put(doc("late"), json={"content": "too late"})
        assert_refused(r)
        assert policy(r) == ("writes", 120)
        # Refused before any work: the document does not exist. Reads have their own count.
        r = await api.get(doc("late"))
        assert_problem(r, 404, "knowledge.not_found")
        assert policy(r) == ("reads", 600) and ratelimit(r)[:2] == ("reads", 599)
        assert_refused(await api.post(PERSONAS, json={"name": "x"}))
        assert (await api.get(PERSONAS)).json()["total"] == 0
        # Refused requests are not counted as used requests; all others are.
        usage = (await api.get("/api/subscription/usage")).json()["usage"]
        assert usage["requests"]["used"] == 120 + 3


async def test_all_keys_of_a_user_share_the_count(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=4)})
    keys = [await new_key(app, "shared@example.com", plan="small") for _ in range(2)]
    other = await new_key(app, "other@example.com", plan="small")
    async with (
        client_for(app, **{"X-Api-Key": keys[0]}) as one,
        client_for(app, **{"X-Api-Key": keys[1]}) as two,
        client_for(app, **{"X-Api-Key": other}) as stranger,
    ):
        for i in range(4):
            r = await (one if i % 2 else two).delete(doc("x"))
            assert r.status_code == 204 and ratelimit(r)[1] == 3 - i
        assert_refused(await one.delete(doc("x")))
        assert_refused(await two.delete(doc("x")))
        # Another user has a window of their own.
        r = await stranger.delete(doc("x"))
        assert r.status_code == 204 and ratelimit(r)[1] == 3


async def test_headers_on_every_authenticated_response(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=50, reads=50)})
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api, client_for(app) as anon:
        responses = {
            "list": await api.get(PERSONAS),
            "missing": await api.get(f"{PERSONAS}/per_missing"),
            "bad cursor": await api.get(PERSONAS, params={"cursor": "!"}),
            "invalid": await api.post(PERSONAS, json={}),
            "malformed": await api.post(
                PERSONAS, content=b"{", headers={"content-type": "application/json"}
            ),
            "created": await api.post(PERSONAS, json={"name": "A"}),
            "usage": await api.get("/api/subscription/usage"),
        }
        expected = {
            "list": (200, "reads", 49),
            "missing": (404, "reads", 48),
            "bad cursor": (400, "reads", 47),
            "invalid": (422, "writes", 49),
            "malformed": (400, "writes", 48),
            "created": (201, "writes", 47),
            "usage": (200, "reads", 46),
        }
        for name, r in responses.items():
            status, charged, remaining = expected[name]
            assert r.status_code == status, (name, r.text)
            assert policy(r) == (charged, 50), name
            kind, r_left, t = ratelimit(r)
            assert (kind, r_left) == (charged, remaining), name
            assert 1 <= t <= 60
        # No key, no user to charge: no RateLimit fields.
        r = await anon.get(PERSONAS)
        assert_problem(r, 401, "auth.unauthorized")
        assert "ratelimit" not in r.headers and "ratelimit-policy" not in r.headers


def client_at(app: Starlette, address: str, **headers: str) -> httpx.AsyncClient:
    """A client whose connection comes from `address` (the peer the server sees)."""
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers)


BAD_KEY = {"X-Api-Key": "pa_live_" + "0" * 40}


async def test_failed_authentication_never_refuses_a_valid_key(make_app: AppFactory) -> None:
    app = await make_app(auth_failures_per_minute=5)
    key = {"X-Api-Key": await new_key(app)}
    async with client_at(app, "10.0.0.1") as shared, client_at(app, "10.0.0.2") as elsewhere:
        for _ in range(5):
            assert_problem(await shared.get(PERSONAS, headers=BAD_KEY), 401, "auth.unauthorized")
        # Past the limit, failures from this address answer 429 without saying anything about
        # the key; a successful request neither counts nor resets the count.
        for _ in range(3):
            r = await shared.get(PERSONAS, headers=BAD_KEY)
            assert_problem(r, 429, "limits.rate_exceeded")
            assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
            # One broken client behind a shared proxy or NAT does not lock the others out.
            assert (await shared.get(PERSONAS, headers=key)).status_code == 200
        # A request without a key is not a guess: still 401 (test_a_missing_key_is_not_a_failure).
        assert_problem(await shared.get(PERSONAS, headers={}), 401, "auth.unauthorized")
        # Other addresses have a count of their own.
        assert_problem(await elsewhere.get(PERSONAS, headers=BAD_KEY), 401, "auth.unauthorized")
    assert [u.email for u in await accounts.list_users(runtime=app.state.runtime)] == [
        "owner@example.com"
    ]


async def test_a_missing_key_is_not_a_failure(make_app: AppFactory) -> None:
    """A request without a key (or with an empty one) guesses nothing: it is always 401, on
    every door, and never counted toward the failed-authentication limit. Keyless clients (a
    browser, a health probe, a fuzzer checking that auth is enforced) would otherwise be told
    429 for what is plainly a 401. Wrong keys are still counted and refused past the limit."""
    app = await make_app(auth_failures_per_minute=3, allowed_hosts=["testserver"])
    mcp = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    mcp_headers = {"Accept": "application/json, text/event-stream"}
    async with client_at(app, "10.0.0.1") as client:

        async def doors(headers: dict[str, str]) -> list[httpx.Response]:
            return [
                await client.get(PERSONAS, headers=headers),
                await client.post(
                    "/graphql", json={"query": "{ viewer { email } }"}, headers=headers
                ),
                await client.post("/mcp", json=mcp, headers={**headers, **mcp_headers}),
            ]

        for _ in range(10):
            for headers in ({}, {"X-Api-Key": ""}):
                rest, graphql, mcp_answer = await doors(headers)
                assert_problem(rest, 401, "auth.unauthorized")
                assert graphql.status_code == 401, graphql.text
                assert graphql.json()["errors"][0]["extensions"]["code"] == "auth.unauthorized"
                assert_problem(mcp_answer, 401, "auth.unauthorized")
        # None of them were counted: three wrong keys are still answered 401, the fourth 429.
        for _ in range(3):
            assert_problem(await client.get(PERSONAS, headers=BAD_KEY), 401, "auth.unauthorized")
        for r in await doors(BAD_KEY):
            assert r.status_code == 429, r.text
        # Past the limit, a missing key is still a plain 401.
        assert_problem(await client.get(PERSONAS), 401, "auth.unauthorized")


async def test_a_burst_of_failures_cannot_pass_the_limit(make_app: AppFactory) -> None:
    app = await make_app(auth_failures_per_minute=10)
    async with client_at(app, "10.0.0.1", **BAD_KEY) as attacker:
        responses = await asyncio.gather(*(attacker.get(PERSONAS) for _ in range(40)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 10 + [429] * 30


async def test_failures_are_counted_per_client_behind_trusted_proxies(
    make_app: AppFactory,
) -> None:
    app = await make_app(auth_failures_per_minute=3, trusted_proxies=["10.9.0.0/16"])
    key = await new_key(app)
    proxy = "10.9.0.5"  # every request below comes through the same reverse proxy

    def via_proxy(client: str, spoofed: str | None = None) -> dict[str, str]:
        # The proxy appends the address it saw; whatever the client wrote is on the left.
        chain = f"{spoofed}, {client}" if spoofed else client
        return {**BAD_KEY, "X-Forwarded-For": chain}

    async with client_at(app, proxy) as through:
        for i in range(3):
            # Naming someone else on the left changes nothing: the proxy's entry counts.
            headers = via_proxy("203.0.113.7", spoofed=f"198.51.100.{i}")
            assert_problem(await through.get(PERSONAS, headers=headers), 401, "auth.unauthorized")
        r = await through.get(PERSONAS, headers=via_proxy("203.0.113.7"))
        assert_problem(r, 429, "limits.rate_exceeded")
        # Another client behind the same proxy is counted apart, and a second trusted hop is
        # looked through.
        for chain in ("203.0.113.8", "203.0.113.8, 10.9.3.3"):
            headers = {**BAD_KEY, "X-Forwarded-For": chain}
            assert_problem(await through.get(PERSONAS, headers=headers), 401, "auth.unauthorized")
        ok = await through.get(
            PERSONAS, headers={"X-Api-Key": key, "X-Forwarded-For": "203.0.113.7"}
        )
        assert ok.status_code == 200
    # A peer that is not a trusted proxy is counted as itself, whatever it claims.
    async with client_at(app, "192.0.2.1") as direct:
        for i in range(3):
            headers = {**BAD_KEY, "X-Forwarded-For": f"192.0.2.{100 + i}"}
            assert_problem(await direct.get(PERSONAS, headers=headers), 401, "auth.unauthorized")
        r = await direct.get(PERSONAS, headers={**BAD_KEY, "X-Forwarded-For": "192.0.2.200"})
        assert_problem(r, 429, "limits.rate_exceeded")


async def test_plan_change_starts_a_fresh_window(make_app: AppFactory) -> None:
    """The window is keyed by the limit, so a plan change counts from zero under the new limit
    (documented in app/http/ratelimit.py)."""
    app = await make_app(
        plans={"small": small_plan("small", writes=2), "bigger": small_plan("bigger", writes=3)}
    )
    key = await new_key(app, "upgrader@example.com", plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        for _ in range(2):
            assert (await api.delete(doc("x"))).status_code == 204
        assert_refused(await api.delete(doc("x")))
        await accounts.set_plan(
            runtime=app.state.runtime, email="upgrader@example.com", plan_id="bigger"
        )
        for i in range(3):
            r = await api.delete(doc("x"))
            assert r.status_code == 204 and ratelimit(r)[1] == 2 - i
        assert_refused(await api.delete(doc("x")))


# --- Redis: several processes share one count ------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port in a temporary directory, stopped afterwards."""
    with servers.redis_server(tmp_path / "redis") as url:
        yield url


@pytest.mark.redis
async def test_redis_shares_the_count_between_processes(
    make_app: AppFactory, redis_url: str, tmp_path: Path
) -> None:
    plans = {"small": small_plan("small", writes=5)}
    data_dir = tmp_path / "shared-data"  # one database, two server "processes"
    first = await make_app(data_dir=data_dir, redis_url=redis_url, plans=plans)
    second = await make_app(data_dir=data_dir, redis_url=redis_url, plans=plans)
    key = await new_key(first, plan="small")
    async with (
        client_for(first, **{"X-Api-Key": key}) as a,
        client_for(second, **{"X-Api-Key": key}) as b,
    ):
        for i in range(5):
            r = await (a if i % 2 else b).delete(doc("x"))
            assert r.status_code == 204 and ratelimit(r)[1] == 4 - i
        assert_refused(await a.delete(doc("x")))
        assert_refused(await b.delete(doc("x")))
        assert (await a.get(PERSONAS)).status_code == 200  # reads are counted apart


@pytest.mark.redis
async def test_redis_down_answers_503_when_the_policy_is_closed(make_app: AppFactory) -> None:
    """Under PERSONAIZER_RATE_LIMIT_ON_REDIS_FAILURE=closed a configured but unreachable Redis
    refuses requests rather than letting them through limited per process."""
    app = await make_app(
        redis_url=f"redis://127.0.0.1:{servers.free_port()}/0",
        rate_limit_on_redis_failure="closed",
    )
    key = await new_key(app)
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.get(PERSONAS)
        assert_problem(r, 503, "server.unavailable")
        assert r.headers["retry-after"] == "5"


@pytest.mark.redis
async def test_redis_down_limits_each_process_at_its_share(make_app: AppFactory) -> None:
    """By default (policy open) an unreachable Redis does not stop the API: each process counts
    in memory at 1/PERSONAIZER_RATE_LIMIT_PROCESSES of the budget, and says so in its headers."""
    app = await make_app(
        redis_url=f"redis://127.0.0.1:{servers.free_port()}/0",
        rate_limit_processes=2,
        plans={"small": small_plan("small", writes=6)},
    )
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        for i in range(3):
            r = await api.delete(doc("x"))
            assert r.status_code == 204, r.text
            assert r.headers["ratelimit-policy"] == '"writes";q=3;w=60'
            assert ratelimit(r)[1] == 2 - i
        assert_refused(await api.delete(doc("x")))
