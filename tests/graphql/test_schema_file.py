"""`schema.graphql` is generated (`personaizer export-schema`) and must equal what the server
serves (API.md section 10). After a schema change: `personaizer export-schema -o schema.graphql`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from graphql import (
    build_client_schema,
    build_schema,
    get_introspection_query,
    lexicographic_sort_schema,
    print_schema,
)
from strawberry.printer import print_schema as strawberry_print_schema

from app.graphql.schema import schema
from tests.graphql.conftest import gql_data

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "schema.graphql"
BIN = Path(sys.executable).with_name("personaizer")
STALE = "schema.graphql is stale: run `personaizer export-schema -o schema.graphql`"


def test_schema_graphql_is_the_live_schema() -> None:
    # `strawberry export-schema app.graphql.schema:schema` prints exactly this (its printer and
    # a trailing newline); the `strawberry` CLI itself needs the optional `cli` extra.
    assert CHECKED_IN.read_text(encoding="utf-8") == strawberry_print_schema(schema) + "\n", STALE


def test_export_schema_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    r = subprocess.run(
        [str(BIN), "export-schema", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == CHECKED_IN.read_text(encoding="utf-8")

    out = tmp_path / "schema.graphql"
    r = subprocess.run(
        [str(BIN), "export-schema", "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_text(encoding="utf-8") == CHECKED_IN.read_text(encoding="utf-8")


@pytest.mark.anyio
async def test_the_server_serves_the_checked_in_schema(api: httpx.AsyncClient) -> None:
    """What a client introspects at /graphql is the SDL in the repository."""
    query = get_introspection_query(descriptions=True, specified_by_url=True)
    served = build_client_schema(await gql_data(api, query))  # type: ignore[arg-type]
    checked_in = build_schema(CHECKED_IN.read_text(encoding="utf-8"))
    assert print_schema(lexicographic_sort_schema(served)) == print_schema(
        lexicographic_sort_schema(checked_in)
    ), STALE
