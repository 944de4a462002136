"""What a tenant token adds to a request, against the plain key it was minted from (issue 20:
at most 0.2 ms at p50). Run by `scripts/bench.py` after its search table, or alone with
`scripts/bench.py --auth-only`.

In one process, on a fresh database (SQLite in a temporary folder, or `--database-url`): an app
with its lifespan, one user, one persona, a key with `search` and `personas:read`, and a token
minted from that key. Two figures, each the p50 over `repeat` rounds in which the key and the
token take turns (so both see the same machine state), and the difference of the p50s:

1. `accounts.authenticate` alone: the key's hash and one-hop lookup, against the token's
   checks and its key's one-hop lookup.
2. A whole request through the ASGI app (every middleware, the guard, the rate limiters, the
   route): `GET /api/personas/{id}`, which both may make; what the token adds to the request a
   browser would make.

Each also as CPU time of the process (all its threads: SQLite's work runs in its own), which
other processes on a busy machine disturb far less than the wall clock. A token's first request
also parses it and checks its HMAC (later ones find it verified); that is timed on its own.
The figure held against the target is the p50 of each round's difference (the token's request
minus the key's, made one right after the other), which a busy machine's drift disturbs less
than the difference of two p50s. Nothing here is asserted; the target is printed beside it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt

from app.client import Client
from app.embedding.embedder import Model
from app.main import create_app
from app.services import accounts
from app.services.runtime import Runtime
from app.settings import Settings

TARGET_MS = 0.2
EMAIL = "bench-auth@example.com"
Run = Callable[[], Awaitable[Any]]
#: (the key's timings, the token's), in ms.
Timings = tuple[list[float], list[float]]


async def _pair(key_run: Run, token_run: Run, repeat: int) -> tuple[Timings, Timings]:
    """Alternating wall-clock and CPU timings of the key's and the token's call, after a
    warm-up of each."""
    for _ in range(20):
        await key_run()
        await token_run()
    wall: Timings = ([], [])
    cpu: Timings = ([], [])
    for i in range(repeat):
        # Which goes first alternates too, so neither always follows the other.
        order = ((0, key_run), (1, token_run))
        for which, run in order if i % 2 == 0 else reversed(order):
            started, started_cpu = time.perf_counter(), time.process_time()
            await run()
            wall[which].append((time.perf_counter() - started) * 1000)
            cpu[which].append((time.process_time() - started_cpu) * 1000)
    return wall, cpu


async def measure(database_url: str | None, model: Model, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="personaizer-bench-auth-") as tmp:
        # Request logs off: formatting them costs more than what is measured, and varies.
        overrides: dict[str, Any] = {"log_level": "WARNING"}
        if database_url:
            overrides["database_url"] = database_url
        app = create_app(Settings.for_tests(Path(tmp), **overrides), model=model)
        async with app.router.lifespan_context(app):
            runtime: Runtime = app.state.runtime
            await accounts.create_user(runtime=runtime, email=EMAIL, plan_id="unlimited")
            owner = (await accounts.create_key(runtime=runtime, email=EMAIL)).key
            key = await accounts.create_key(
                runtime=runtime, email=EMAIL, scopes=["search", "personas:read"]
            )
            secret = key.signing_secret
            assert secret
            token = Client.mint_token(key=key.key, signing_secret=secret, sub="visitor")

            def auth(credential: str) -> Run:
                return lambda: accounts.authenticate(runtime=runtime, api_key=credential)

            by_auth = await _pair(auth(key.key), auth(token), repeat)

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                made = await http.post(
                    "/api/personas", json={"name": "Ava"}, headers={"X-Api-Key": owner}
                )
                path = f"/api/personas/{made.json()['id']}"

                def get(credential: str) -> Run:
                    async def run() -> None:
                        r = await http.get(path, headers={"X-Api-Key": credential})
                        assert r.status_code == 200, r.text

                    return run

                by_request = await _pair(get(key.key), get(token), repeat)

    first: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        jwt.decode(token, secret, algorithms=["HS256"], leeway=30)
        first.append((time.perf_counter() - started) * 1000)
    p50 = statistics.median
    return {
        "auth_key_p50_ms": p50(by_auth[0][0]),
        "auth_token_p50_ms": p50(by_auth[0][1]),
        "auth_key_cpu_p50_ms": p50(by_auth[1][0]),
        "auth_token_cpu_p50_ms": p50(by_auth[1][1]),
        "request_key_p50_ms": p50(by_request[0][0]),
        "request_token_p50_ms": p50(by_request[0][1]),
        "request_key_cpu_p50_ms": p50(by_request[1][0]),
        "request_token_cpu_p50_ms": p50(by_request[1][1]),
        "request_added_paired_p50_ms": p50(t - k for k, t in zip(*by_request[0], strict=True)),
        "token_first_checks_p50_ms": p50(first),
    }


def _row(label: str, key: float, token: float) -> str:
    return f"{label:<40}{key:>9.3f}{token:>9.3f}{token - key:>+9.3f}{token / key:>7.2f}x"


def report(engine: str, figures: dict[str, float], repeat: int) -> list[str]:
    f = figures
    added = f["request_added_paired_p50_ms"]
    verdict = "pass" if added <= TARGET_MS else "MISSED"
    return [
        f"\ntenant token vs plain key, {engine}, p50 of {repeat} alternating rounds (ms)",
        f"{'':<40}{'key':>9}{'token':>9}{'added':>9}{'ratio':>8}",
        _row("authenticate() alone", f["auth_key_p50_ms"], f["auth_token_p50_ms"]),
        _row("  its CPU time", f["auth_key_cpu_p50_ms"], f["auth_token_cpu_p50_ms"]),
        _row("GET /api/personas/{id} via ASGI", f["request_key_p50_ms"], f["request_token_p50_ms"]),
        _row("  its CPU time", f["request_key_cpu_p50_ms"], f["request_token_cpu_p50_ms"]),
        f"a token's first request also parses it and checks its HMAC: "
        f"{f['token_first_checks_p50_ms']:.3f} ms (later requests with it skip that)",
        f"added to a request (p50 of each round's token - key): {added:+.3f} ms, "
        f"target <= +{TARGET_MS} ms: {verdict}",
    ]


async def run(database_urls: Sequence[str | None], model: Model, repeat: int) -> None:
    for url in database_urls:
        figures = await measure(url, model, repeat)
        for line in report("postgresql" if url else "sqlite", figures, repeat):
            print(line)
