"""`personaizer sync DIR`: upload a folder through the public API, with the client in app.client.

It never opens the database, so it works against a remote server too. Each readable file
becomes one document of the *source* (`--source`, by default the folder's name):

- `external_id` is `<source>:<path>` (app/reading/ids.py: readable, stable, collision-free);
- `title` is the document's own, one function per type in app/reading/extract.py (front matter
  or heading outside code in Markdown, section title in reStructuredText, `<title>` then `<h1>`
  in HTML, properties then a heading in PDF and DOCX), else the file name without extension;
- files matching an `--exclude` glob or the folder's `.personaizerignore` (gitignore syntax)
  are skipped, each with the rule that excluded it;
- `metadata` is `{"source": <source>, "path": <relative path>, "synced_by": "personaizer-sync"}`.

Batches are cut by count and by characters, so no request embeds for minutes; each batch
commits on its own. Before sending, sync lists the source's documents (their content's SHA-256,
title and metadata, no content) and sends only the files the server does not already hold as
they are: a re-run of an unchanged folder uploads nothing. Files that cannot be uploaded (unsupported, unreadable,
empty, over the plan's `doc_chars`) are skipped and reported, or with `strict` fail the sync
before anything is sent. `prune` deletes this source's synced documents whose file is gone;
other sources' and other writers' documents are never touched.

`persona` sets that persona's knowledge filter to the source (`{"metadata": {"source":
<source>}}`, API.md section 13), before anything is uploaded (an unknown persona fails the
sync with nothing sent): the persona's knowledge is then every document of the source, those of
later syncs too, with no further call. It replaces the persona's filter as a whole.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.client import DEFAULT_BATCH_CHARS, AsyncClient, BatchDone, DocInput, Document
from app.reading.ids import SOURCE_RE, default_source, external_id_for
from app.sync.folder import SYNCED_BY, Folder, Skipped, SyncError, collect, skip_groups

__all__ = [
    "SYNCED_BY",
    "Folder",
    "Progress",
    "Skipped",
    "SyncError",
    "SyncReport",
    "collect",
    "external_id_for",
    "held_as_is",
    "skip_groups",
    "source_filter",
    "source_for",
    "sync_folder",
]


class Progress(Protocol):
    """What a sync tells as it goes (the CLI draws a bar on a terminal, lines otherwise)."""

    def reading(self, done: int, total: int, path: str) -> None: ...

    def uploading(self, files: int, chars: int, unchanged: int) -> None: ...

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
    #: The documents that changed, by external_id, in the order they were sent (deleted: in
    #: external_id order): what the operator is told by name.
    created_ids: list[str] = field(default_factory=list)
    updated_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    #: Documents sent to the server: those not already held as they are.
    sent: int = 0
    #: The persona given and the knowledge filter it now has.
    persona_id: str | None = None
    knowledge_filter: dict[str, Any] | None = None


def source_for(root: Path, explicit: str | None) -> str:
    if explicit is None:
        return default_source(root.resolve().name)
    if not SOURCE_RE.match(explicit):
        raise SyncError(f"--source {explicit!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")
    return explicit


def held_as_is(doc: DocInput, stored: Document | None) -> bool:
    """Whether the server already holds `doc` exactly: content (by its SHA-256, as the server
    hashes it), title and metadata. Then sending it would only be answered `no_op`; for a large
    folder that is most of a re-sync's bytes and time."""
    return (
        stored is not None
        and stored.content_sha256 == hashlib.sha256(doc.content.encode()).hexdigest()
        and stored.title == doc.title
        and stored.metadata == doc.metadata
    )


async def sync_folder(
    api: AsyncClient,
    root: Path,
    *,
    source: str | None = None,
    prune: bool = False,
    strict: bool = False,
    exclude: Sequence[str] = (),
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
        exclude=exclude,
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

    # What the server holds of this source: one walk of the list (no content, its hash), both
    # to leave out what is unchanged and to find what --prune deletes.
    prefix = f"{name}:"
    stored = {d.external_id: d async for d in api.iter_docs() if d.external_id.startswith(prefix)}
    send = [d for d in folder.docs if not held_as_is(d, stored.get(d.external_id))]
    report.no_op = len(folder.docs) - len(send)
    report.sent = len(send)

    files_done = 0
    if progress is not None:
        progress.uploading(len(send), sum(d.size for d in send), report.no_op)

    def on_batch(batch: BatchDone) -> None:
        nonlocal files_done
        files_done += len(batch.items)
        report.batches += 1
        for item in batch.result.results:
            if item.status == "created":
                report.created_ids.append(item.external_id)
            elif item.status == "updated":
                report.updated_ids.append(item.external_id)
        if progress is not None:
            progress.uploaded(batch, files_done)

    if send:
        result = await api.upsert_docs_batched(
            send, batch_items=limits.batch_items, max_chars=max_chars, on_batch=on_batch
        )
        report.created = result.summary.created
        report.updated = result.summary.updated
        report.no_op += result.summary.no_op
    if prune:
        report.deleted_ids = await _prune(api, folder, stored.values())
        report.deleted = len(report.deleted_ids)
    report.seconds = time.monotonic() - started
    return report


def source_filter(source: str) -> dict[str, Any]:
    """The knowledge filter that gives a persona every document of `source`."""
    return {"metadata": {"source": source}}


async def _prune(api: AsyncClient, folder: Folder, stored: Iterable[Document]) -> list[str]:
    """Delete the source's synced documents whose file is gone (and only those)."""
    keep = folder.present_ids
    gone = [
        doc.external_id
        for doc in stored
        if doc.metadata.get("synced_by") == SYNCED_BY
        and doc.metadata.get("source") == folder.source
        and doc.external_id not in keep
    ]
    for external_id in gone:
        await api.delete_doc(external_id)
    return gone
