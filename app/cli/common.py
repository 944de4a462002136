"""What every command shares: the consoles, the options, settings from them, failures as one
line, and running a use case against the database."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from importlib import metadata
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


#: A one-file build's list of its runtime files (scripts/build_binary.py writes it).
BUNDLE_MANIFEST = "personaizer_bundle.json"


def bundle_root() -> Path | None:
    """Where a one-file build unpacked itself (PyInstaller's `sys._MEIPASS`); None otherwise."""
    root = getattr(sys, "_MEIPASS", None)
    return Path(root) if getattr(sys, "frozen", False) and root is not None else None


def check_bundle() -> None:
    """A one-file build checks, before any command, that every runtime file it was built with
    is there at its size (the build lists them): a damaged bundle is one line, not a traceback
    from deep inside the first request that needs the missing file. (The model's own digest is
    checked when it loads.)"""
    root = bundle_root()
    if root is None:
        return
    try:
        manifest = json.loads((root / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
        files: dict[str, int] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Fail(
            f"this personaizer binary is damaged: its {BUNDLE_MANIFEST} is unreadable ({exc})"
        ) from exc
    for name, size in files.items():
        path = root / name
        try:
            found = path.stat().st_size
        except OSError:
            raise Fail(
                f"this personaizer binary is damaged: {name} is missing from its bundle"
            ) from None
        if found != size:
            raise Fail(
                f"this personaizer binary is damaged: {name} is {found} bytes, built as {size}"
            )


def version() -> str:
    """This build's version: a one-file build's recorded one, else the installed package's."""
    root = bundle_root()
    if root is not None:
        with_version = json.loads((root / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
        return str(with_version.get("version", "unknown"))
    try:
        return metadata.version("personaizer")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
