"""`personaizer export-schema`: the GraphQL SDL, from app.main's wiring (the CLI imports no
other door)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import DatabaseUrl, DataDir


def export_schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the SDL to this file.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print the GraphQL schema (SDL) the server serves, exactly as `schema.graphql` holds it
    (and as `strawberry export-schema app.graphql.schema:schema` prints it). --data-dir and
    --database-url are accepted for uniformity and unused: the schema needs no data."""
    from app.main import graphql_sdl

    sdl = graphql_sdl()
    if output is None:
        sys.stdout.write(sdl)  # not `out`: rich would read `[String!]` as markup
    else:
        output.write_text(sdl, encoding="utf-8")
