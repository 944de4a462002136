"""What every command shares: the consoles, the options, settings from them, failures as one
line, and running a use case against the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from app.services import operations
from app.services.runtime import Runtime
from app.settings import Settings

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the data lives [env PERSONAIZER_DATA_DIR; ./data]"),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL [env PERSONAIZER_DATABASE_URL]"),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Fail(Exception):
    """A clean failure: its message is the one line printed on stderr, exit status 1. (The
    services' `AppError` and `OperationError` are printed the same way by `main`.)"""


def load_settings(data_dir: Path | None, database_url: str | None, **extra: Any) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise Fail(f"invalid configuration: {where}: {first['msg']}") from exc


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end, the database's failures as one line for the operator."""
    with operations.reported():
        return asyncio.run(coro)


def run_with_runtime(
    settings: Settings, use: Callable[[Runtime], Awaitable[T]], *, create: bool = False
) -> T:
    """Run `use` against the database; only `create=True` (serve, init) may make a new one."""
    operations.check_database(settings, create=create)

    async def main() -> T:
        async with operations.command_runtime(settings, create=create) as runtime:
            return await use(runtime)

    return run(main())


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
