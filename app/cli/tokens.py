"""`personaizer tokens mint`: a tenant token, made offline (no server, no database)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import DatabaseUrl, DataDir, err, out
from app.client.tokens import MAX_EXPIRES_IN_S, mint_token

cli = typer.Typer(help="Tenant tokens for browsers (API.md section 12).", no_args_is_help=True)


@cli.command("mint")
def tokens_mint(
    key: Annotated[str, typer.Option(help="The key (or its 12-character prefix).")],
    signing_secret: Annotated[str, typer.Option(help="The key's signing secret.")],
    expires_in: Annotated[
        int, typer.Option(min=1, max=MAX_EXPIRES_IN_S, help="Seconds until it expires.")
    ] = 3600,
    sub: Annotated[str | None, typer.Option(help="The end user, for their own rate limit.")] = None,
    personas: Annotated[
        str | None, typer.Option(help="Comma-separated persona ids, within the key's.")
    ] = None,
    # Every command takes these (API.md section 9); minting needs no database, so they are unused.
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a tenant token (the last line of stdout). Offline: no server, no database."""
    persona_ids = [p.strip() for p in personas.split(",") if p.strip()] if personas else None
    token = mint_token(
        key=key,
        signing_secret=signing_secret,
        expires_in=expires_in,
        sub=sub,
        persona_ids=persona_ids,
    )
    err.print(f"tenant token for {key[:12]}…, valid {expires_in} s:")
    out.print(token, soft_wrap=True)
