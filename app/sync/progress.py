"""How `personaizer sync` shows its progress: a rich bar on a terminal, else a line per batch
(for cron and CI logs, where a bar prints nothing at all)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from app.client import BatchDone, RetryEvent
from app.text import plural


def _outcome(batch: BatchDone) -> str:
    s = batch.result.summary
    return f"created {s.created}, updated {s.updated}, unchanged {s.no_op}"


def _plan(files: int, chars: int, unchanged: int) -> str:
    """What is about to be sent: nothing at all on a re-run of an unchanged folder."""
    if files == 0:
        return f"{unchanged:,} unchanged, nothing to upload"
    kept = f"; {unchanged:,} unchanged" if unchanged else ""
    return f"uploading {plural(files, 'document')} ({plural(chars, 'character')}){kept}"


def _retry(event: RetryEvent) -> str:
    why = f"answered {event.status}" if event.status is not None else event.error
    return f"{event.method} {event.path} {why}; retrying in {event.delay:g} s"


class LineProgress:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.total = 0

    def reading(self, done: int, total: int, path: str) -> None:
        if done == total:
            self.console.print(f"read {plural(total, 'file')}")

    def uploading(self, files: int, chars: int, unchanged: int) -> None:
        self.total = files
        self.console.print(_plan(files, chars, unchanged))

    def uploaded(self, batch: BatchDone, files_done: int) -> None:
        chars = sum(d.size for d in batch.items)
        self.console.print(
            f"batch {batch.index + 1}: {plural(len(batch.items), 'document')}, "
            f"{plural(chars, 'character')}, "
            f"{batch.seconds:.1f} s: {_outcome(batch)} ({files_done}/{self.total})"
        )

    def retrying(self, event: RetryEvent) -> None:
        self.console.print(_retry(event))


class BarProgress:
    """A bar over files, read then uploaded; use it as a context manager."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[file]}", style="dim"),
            console=console,
        )
        self._read: TaskID | None = None
        self._upload: TaskID | None = None

    def __enter__(self) -> BarProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def reading(self, done: int, total: int, path: str) -> None:
        if self._read is None:
            self._read = self.bar.add_task("reading", total=total, file="")
        self.bar.update(self._read, completed=done, file=path)

    def uploading(self, files: int, chars: int, unchanged: int) -> None:
        if self._read is not None:
            self.bar.update(self._read, file="")
        if files == 0:
            self.bar.console.print(_plan(files, chars, unchanged))
            return
        self._upload = self.bar.add_task("uploading", total=files, file="")

    def uploaded(self, batch: BatchDone, files_done: int) -> None:
        if self._upload is not None:
            last = batch.items[-1].metadata.get("path", batch.items[-1].external_id)
            self.bar.update(self._upload, completed=files_done, file=str(last))

    def retrying(self, event: RetryEvent) -> None:
        self.bar.console.print(_retry(event))
