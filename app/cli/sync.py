"""`personaizer sync DIR`: upload a folder through the public API (the client in app.client)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import DatabaseUrl, DataDir, Fail, err, out
from app.client.batching import DEFAULT_BATCH_CHARS
from app.text import plural

if TYPE_CHECKING:
    from app.sync import SyncReport


def sync(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The folder to upload.")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="PERSONAIZER_API_KEY", help="The key to upload with.")
    ],
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    source: Annotated[
        str | None,
        typer.Option(help="Name of what this folder syncs into [the folder's name]."),
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete this source's documents whose file is gone.")
    ] = False,
    persona: Annotated[
        str | None,
        typer.Option(
            "--persona",
            metavar="ID",
            help=(
                "Set this persona's knowledge filter to the source (metadata.source), so its "
                "knowledge is every document of the source, later syncs' too; replaces its "
                "filter."
            ),
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail, uploading nothing, if any file is skipped.")
    ] = False,
    batch_chars: Annotated[
        int, typer.Option(min=1, help="Characters per upload request, at most.")
    ] = DEFAULT_BATCH_CHARS,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Leave out files matching GLOB (gitignore syntax; repeatable). A "
            ".personaizerignore file at the folder's root is read too.",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Name every changed document and skipped file."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for one request.")
    ] = 300.0,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Upload a folder through the public API: Markdown, text, reStructuredText, HTML, PDF and
    DOCX files (and text files without an extension). Only what the server does not already hold
    is sent. What changed is named on stderr, and the skipped files are listed by reason. --data-dir/--database-url are accepted for
    uniformity and unused: sync only speaks HTTP."""
    from app.client import AsyncClient, ClientError, RequestTimeout
    from app.sync import SyncError, sync_folder
    from app.sync.progress import BarProgress, LineProgress

    progress: BarProgress | LineProgress = (
        BarProgress(err) if err.is_terminal else LineProgress(err)
    )

    async def main() -> SyncReport:
        async with AsyncClient(url, api_key, timeout=timeout, on_retry=progress.retrying) as api:
            return await sync_folder(
                api,
                directory,
                source=source,
                prune=prune,
                strict=strict,
                exclude=exclude or (),
                max_chars=batch_chars,
                progress=progress,
                persona=persona,
            )

    try:
        if isinstance(progress, BarProgress):
            with progress:
                report = asyncio.run(main())
        else:
            report = asyncio.run(main())
    except SyncError as exc:
        raise Fail(str(exc)) from exc
    except RequestTimeout as exc:
        raise Fail(f"{exc}; re-run sync: finished documents are no-ops") from exc
    except ClientError as exc:
        raise Fail(str(exc)) from exc
    tell(report, verbose=verbose)
    if report.persona_id is not None:
        rule = json.dumps(report.knowledge_filter, separators=(",", ":"))
        out.print(f"persona {report.persona_id}: knowledge_filter {rule}", markup=False)
    out.print(
        f"{report.source}: created {report.created}, updated {report.updated}, "
        f"unchanged {report.no_op}, deleted {report.deleted}, skipped {len(report.skipped)} "
        f"({plural(report.batches, 'request')}, {report.seconds:.1f} s)",
        markup=False,
    )


#: Created or updated documents named one by one, at most, without --verbose; past it, a count.
NAMED = 10


def tell(report: SyncReport, *, verbose: bool) -> None:
    """What changed, by name, and what was skipped, by reason, on stderr: the summary line on
    stdout stays the one line a script reads. Deletions are always named: they are what an
    operator checks after a --prune."""
    from app.sync import skip_groups

    for verb, ids in (("created", report.created_ids), ("updated", report.updated_ids)):
        if len(ids) > NAMED and not verbose:
            err.print(f"{verb} {plural(len(ids), 'document')} (--verbose names them)")
            continue
        for external_id in ids:
            err.print(f"{verb} {external_id}", markup=False)
    for external_id in report.deleted_ids:
        err.print(f"deleted {external_id}", markup=False)
    if report.skipped:
        err.print(f"skipped {plural(len(report.skipped), 'file')}:")
        for line in skip_groups(report.skipped, names=None if verbose else 5):
            err.print(f"  {line}", markup=False)
