"""The PostgreSQL engine: asyncpg, a binary codec for pgvector's `vector`, advisory locks,
disconnects.

Vectors cross the wire in pgvector's binary format (a codec registered on every new connection),
so a chunk's 384 floats are 1.5 KB of bytes rather than ~4 KB of text to print and parse. The
codec is numpy both ways (a big-endian float32 view): the `pgvector` package's own goes through
Python's `array` and copies twice.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from app.settings import Settings

#: The first key of personaizer's advisory locks (the second is a user id, or 0).
LOCK_NAMESPACE = 0x7E50
#: Advisory lock (second key) held by whoever is upgrading the schema.
_MIGRATION_LOCK = -1


_HEADER = struct.Struct(">HH")  # dimensions, unused


def encode_vector(value: Any) -> bytes:
    array = np.asarray(value, dtype=">f4")
    return _HEADER.pack(len(array), 0) + array.tobytes()


def decode_vector(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=">f4", offset=_HEADER.size).astype(np.float32)


async def register_vector(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "vector", encoder=encode_vector, decoder=decode_vector, format="binary", schema="public"
    )


#: Behind a transaction-pooling PgBouncer (`PERSONAIZER_DATABASE_POOLER=transaction`): a
#: statement prepared in one transaction may be looked for on another server connection in the
#: next, and asyncpg's names (`__asyncpg_stmt_1__`, counted per client connection) collide
#: between clients sharing a server connection. So nothing is cached (asyncpg's statement
#: cache, SQLAlchemy's), and every statement is the unnamed one, which lives until the next
#: statement of the same transaction replaces it: nothing is left behind on a server
#: connection (uuid names, SQLAlchemy's suggestion, would pile up there until it closes).
#: The cost is a parse per statement. PgBouncer 1.21+ with `max_prepared_statements` tracks
#: named statements itself and needs none of this.
TRANSACTION_POOLER_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: "",
}


def create_engine(url: URL, settings: Settings) -> AsyncEngine:
    connect_args: dict[str, Any] = {"timeout": settings.busy_timeout_s}
    if settings.database_pooler == "transaction":
        connect_args.update(TRANSACTION_POOLER_ARGS)
    engine = create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        # A connection that died while idle in the pool (a server restart) is replaced before
        # it is handed out, rather than failing the request that drew it.
        pool_pre_ping=True,
        pool_timeout=settings.busy_timeout_s,
        connect_args=connect_args,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # ValueError: the extension is not installed yet; the migration creates it.
        with contextlib.suppress(ValueError):
            dbapi_conn.run_async(register_vector)

    return engine


async def lock_user(session: AsyncSession, user_id: int) -> None:
    """Serialize this transaction with the user's other writes (released at commit)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(:ns, :u)"), {"ns": LOCK_NAMESPACE, "u": user_id}
    )


async def lock_migrations(conn: AsyncConnection) -> None:
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(:ns, :k)"),
        {"ns": LOCK_NAMESPACE, "k": _MIGRATION_LOCK},
    )


async def check_vector_extension(conn: AsyncConnection, where: str) -> None:
    """Refuse, in one line, a server where the `vector` extension cannot be had."""
    from app.storage.migrations import SchemaError

    installed, available = (
        await conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector'),"
                " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
            )
        )
    ).one()
    if installed:
        return
    if not available:
        raise SchemaError(
            f"PostgreSQL at {where} lacks the pgvector extension (`vector`): install pgvector "
            "0.8 or newer on the server (it is packaged for every PostgreSQL distribution)"
        )
    # pgvector is not a "trusted" extension: only a superuser may create it, or on a managed
    # service a role the service allows (RDS's rds_superuser, Azure's azure.extensions list,
    # Cloud SQL's cloudsqlsuperuser). Privileges cannot tell which, so try, in a savepoint.
    try:
        async with conn.begin_nested():
            await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        if is_disconnect(exc):
            raise
        names = (await conn.execute(text("SELECT current_database(), current_user"))).one()
        raise SchemaError(
            f"PostgreSQL at {where} has pgvector but it is not enabled in database {names[0]}, "
            f"and role {names[1]} may not enable it; have a superuser run, once, in that "
            "database: CREATE EXTENSION vector; (managed services: see docs/scaling.md, "
            '"PostgreSQL privileges")'
        ) from exc


_DISCONNECTS = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
    OSError,
)


def is_disconnect(exc: DBAPIError) -> bool:
    """Whether the error says the server went away or refused us (retry later), not that the
    statement was wrong."""
    orig = exc.orig
    cause = getattr(orig, "__cause__", None)
    return isinstance(orig, _DISCONNECTS) or isinstance(cause, _DISCONNECTS)
