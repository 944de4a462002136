"""The concurrency model check for as long as you like (tests/test_model.py runs it small in CI).

    python scripts/soak.py --minutes 120                       # SQLite, in one process
    python scripts/soak.py --minutes 120 --database-url postgresql://...   # an empty database

Each round makes a new user, runs `tests.support.model.run_model` with a new seed (clients
writing, deleting, attaching and listing at once, a changes-feed consumer beside them), checks
the stored state against what was acknowledged, and every fifth round deletes a user while its
writes are in flight. The first failure stops the run and prints the seed that reproduces it
(`--seed N --rounds 1`). Exit 0 when every round passed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
from starlette.applications import Starlette

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.services import accounts  # noqa: E402
from app.services.runtime import Runtime  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.support import model  # noqa: E402

PLAN = {
    "id": "soak",
    "name": "Soak",
    "limits": {
        "knowledge_docs": 8,
        "knowledge_chars": 1_000_000,
        "doc_chars": 10_000,
        "personas": 3,
        "batch_items": 10,
        "reads_per_minute": 1_000_000,
        "writes_per_minute": 1_000_000,
        "searches_per_minute": 1_000_000,
    },
}


async def new_key(runtime: Runtime, email: str) -> str:
    await accounts.create_user(runtime=runtime, email=email, plan_id="soak")
    return (await accounts.create_key(runtime=runtime, email=email)).key


def client(app: Starlette, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://soak",
        headers={"X-Api-Key": key},
        timeout=300,
    )


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.for_tests(
            Path(tmp) / "data", database_url=args.database_url or "", plans={"soak": PLAN}
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            runtime: Runtime = app.state.runtime
            await runtime.embedder.wait_ready()
            deadline = time.monotonic() + args.minutes * 60
            round_ = 0
            while round_ < args.rounds and time.monotonic() < deadline:
                seed = args.seed + round_
                key = await new_key(runtime, f"r{round_}@soak.example")
                shared = [client(app, key) for _ in range(args.clients)]
                try:
                    started = time.monotonic()
                    await model.run_model(
                        shared, seed=seed, ops=args.ops, doc_limit=PLAN["limits"]["knowledge_docs"]
                    )
                    if round_ % 5 == 4:
                        email = f"victim{round_}@soak.example"
                        victim = client(app, await new_key(runtime, email))

                        async def delete_user(email: str = email) -> None:
                            await accounts.delete_user(runtime=runtime, email=email)

                        async def recreate(email: str = email) -> httpx.AsyncClient:
                            return client(app, await new_key(runtime, email))

                        async with victim:
                            await model.deleted_user_leaves_nothing(
                                victim, delete_user=delete_user, recreate=recreate, seed=seed
                            )
                except AssertionError as exc:
                    print(f"round {round_} (seed {seed}) FAILED:\n{exc}", file=sys.stderr)
                    return 1
                finally:
                    for c in shared:
                        await c.aclose()
                print(f"round {round_} (seed {seed}) passed in {time.monotonic() - started:.1f} s")
                round_ += 1
            print(f"{round_} rounds passed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=3, help="HTTP clients (writers: twice)")
    parser.add_argument("--ops", type=int, default=40, help="operations per writer per round")
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database")
    sys.exit(asyncio.run(main(parser.parse_args())))
