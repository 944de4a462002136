"""`personaizer sync DIR`: upload a folder through the public API, with the client in app.client.

It never opens the database, so it works against a remote server too. Each readable file
becomes one document of the *source* (`--source`, by default the folder's name):

- `external_id` is `<source>:<path>` (app/sync/ids.py: readable, stable, collision-free);
- `title` is the document's own, one function per type in app/sync/extract.py (front matter
  or heading outside code in Markdown, section title in reStructuredText, `<title>` then `<h1>`
  in HTML, properties then a heading in PDF and DOCX), else the file name without extension;
- `metadata` is `{"source": <source>, "path": <relative path>, "synced_by": "personaizer-sync"}`.

Batches are cut by count and by characters, so no request embeds for minutes; each batch
commits on its own, and a re-run sends everything again but the server answers `no_op` for what
is unchanged (nothing is re-embedded). Files that cannot be uploaded (unsupported, unreadable,
empty, over the plan's `doc_chars`) are skipped and reported, or with `strict` fail the sync
before anything is sent. `prune` deletes this source's synced documents whose file is gone;
other sources' and other writers' documents are never touched.

`persona` sets that persona's knowledge filter to the source (`{"metadata": {"source":
<source>}}`, API.md section 13), before anything is uploaded (an unknown persona fails the
sync with nothing sent): the persona's knowledge is then every document of the source, those of
later syncs too, with no further call. It replaces the persona's filter as a whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.client import DEFAULT_BATCH_CHARS, AsyncClient, BatchDone
from app.sync.folder import SYNCED_BY, Folder, Skipped, SyncError, collect
from app.sync.ids import SOURCE_RE, default_source, external_id_for

__all__ = [
    "SYNCED_BY",
    "Folder",
    "Progress",
    "Skipped",
    "SyncError",
    "SyncReport",
    "collect",
    "external_id_for",
    "source_filter",
    "source_for",
    "sync_folder",
]


class Progress(Protocol):
    """What a sync tells as it goes (the CLI draws a bar on a terminal, lines otherwise)."""

    def reading(self, done: int, total: int, path: str) -> None: ...

    def uploading(self, files: int, chars: int) -> None: ...

    def uploaded(self, batch: BatchDone, files_done: int) -> None: ...


@dataclass
class SyncReport:
    source: str
    created: int = 0
    updated: int = 0
    no_op: int = 0
    deleted: int = 0
    batches: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    #: The persona given and the knowledge filter it now has.
    persona_id: str | None = None
    knowledge_filter: dict[str, Any] | None = None


def source_for(root: Path, explicit: str | None) -> str:
    if explicit is None:
        return default_source(root.resolve().name)
    if not SOURCE_RE.match(explicit):
        raise SyncError(f"--source {explicit!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")
    return explicit


async def sync_folder(
    api: AsyncClient,
    root: Path,
    *,
    source: str | None = None,
    prune: bool = False,
    strict: bool = False,
    max_chars: int = DEFAULT_BATCH_CHARS,
    progress: Progress | None = None,
    persona: str | None = None,
) -> SyncReport:
    started = time.monotonic()
    name = source_for(root, source)
    limits = (await api.subscription()).limits
    folder = collect(
        root,
        source=name,
        doc_chars=limits.doc_chars,
        on_file=progress.reading if progress is not None else None,
    )
    report = SyncReport(source=name, skipped=folder.skipped)
    if strict and folder.skipped:
        first = folder.skipped[0]
        more = f" (and {len(folder.skipped) - 1} more)" if len(folder.skipped) > 1 else ""
        raise SyncError(f"--strict: {first}{more}; nothing was uploaded")
    if prune and not folder.present_ids:
        raise SyncError(
            f"{root} has no files: refusing to --prune every document of source {name!r}"
        )
    if persona is not None:
        updated = await api.update_persona(persona, knowledge_filter=source_filter(name))
        report.persona_id = updated.id
        report.knowledge_filter = (
            None if updated.knowledge_filter is None else updated.knowledge_filter.model_dump()
        )

    files_done = 0
    if progress is not None:
        progress.uploading(len(folder.docs), sum(d.size for d in folder.docs))

    def on_batch(batch: BatchDone) -> None:
        nonlocal files_done
        files_done += len(batch.items)
        report.batches += 1
        if progress is not None:
            progress.uploaded(batch, files_done)

    if folder.docs:
        result = await api.upsert_docs_batched(
            folder.docs, batch_items=limits.batch_items, max_chars=max_chars, on_batch=on_batch
        )
        report.created = result.summary.created
        report.updated = result.summary.updated
        report.no_op = result.summary.no_op
    if prune:
        report.deleted = await _prune(api, folder)
    report.seconds = time.monotonic() - started
    return report


def source_filter(source: str) -> dict[str, Any]:
    """The knowledge filter that gives a persona every document of `source`."""
    return {"metadata": {"source": source}}


async def _prune(api: AsyncClient, folder: Folder) -> int:
    """Delete the source's synced documents whose file is gone (and only those)."""
    keep = folder.present_ids
    prefix = f"{folder.source}:"
    # The server filters (API.md section 13); the same tests run here too, so that a server
    # that ignores the filters (older than section 13) still has only these deleted.
    listed = api.iter_docs(
        metadata={"source": folder.source, "synced_by": SYNCED_BY}, external_id_prefix=prefix
    )
    gone = [
        doc.external_id
        async for doc in listed
        if doc.external_id.startswith(prefix)
        and doc.metadata.get("synced_by") == SYNCED_BY
        and doc.metadata.get("source") == folder.source
        and doc.external_id not in keep
    ]
    for external_id in gone:
        await api.delete_doc(external_id)
    return len(gone)
