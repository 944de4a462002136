"""`personaizer sync DIR`: upload a folder of text and Markdown files through the public API.

It is a client of the HTTP API like any other (it never opens the database), so it works against
a remote server too. Each file becomes one document:

- `external_id` is the path relative to DIR with `/` written as `:` and any character outside
  the contract's set written as `-` (`guides/Reset password.md` -> `guides:Reset-password.md`);
  two files mapping to one id are refused before anything is sent.
- `title` is a Markdown file's first `# ` heading, else the file name without its extension.
- `metadata` is `{"source": "personaizer-sync", "path": <relative path>}`.

Re-running it is cheap: unchanged files are `no_op` on the server and nothing is re-embedded.
`--prune` deletes documents this command uploaded earlier (`metadata.source`) whose file is gone;
documents from other sources are never touched.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

SOURCE = "personaizer-sync"
SUFFIXES = {".txt", ".md", ".markdown", ".text"}
_BAD_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
MAX_RETRIES = 8


class SyncError(Exception):
    """A clean failure; the message is one line for the operator."""


@dataclass
class LocalDoc:
    path: str
    external_id: str
    title: str | None
    content: str

    def item(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            "title": self.title,
            "content": self.content,
            "metadata": {"source": SOURCE, "path": self.path},
        }


@dataclass
class SyncReport:
    created: int = 0
    updated: int = 0
    no_op: int = 0
    deleted: int = 0
    skipped: list[str] = field(default_factory=list)


def external_id_for(relative: str) -> str:
    return _BAD_CHARS.sub("-", relative.replace("/", ":"))[:128]


def _title(path: Path, text: str) -> str | None:
    if path.suffix in (".md", ".markdown"):
        for line in text.splitlines():
            if line.startswith("# "):
                return line[2:].strip()[:512] or None
    return path.stem[:512] or None


def collect(root: Path) -> tuple[list[LocalDoc], list[str]]:
    """The documents under `root` (sorted by path) and the files left out, with why."""
    if not root.is_dir():
        raise SyncError(f"{root} is not a folder")
    docs: list[LocalDoc] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() not in SUFFIXES or any(
            part.startswith(".") for part in path.relative_to(root).parts
        ):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            skipped.append(f"{rel}: not UTF-8")
            continue
        if not text.strip():
            skipped.append(f"{rel}: empty")
            continue
        ext_id = external_id_for(rel)
        if ext_id in seen:
            raise SyncError(
                f"{seen[ext_id]} and {rel} both map to external_id {ext_id!r}; rename one"
            )
        seen[ext_id] = rel
        docs.append(LocalDoc(rel, ext_id, _title(path, text), text))
    return docs, skipped


async def _call(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One API call, waiting out 429/503 as the server's Retry-After says."""
    for _ in range(MAX_RETRIES):
        response = await client.request(method, url, **kwargs)
        if response.status_code in (429, 503):
            await asyncio.sleep(min(int(response.headers.get("retry-after", "1")), 60))
            continue
        if response.status_code >= 400:
            raise SyncError(_describe(response))
        return response
    raise SyncError(f"{method} {url}: still refused after {MAX_RETRIES} retries")


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = f"{body.get('code')}: {body.get('detail')}"
        if body.get("errors"):
            detail += f" ({body['errors'][0].get('pointer', '')})"
    except ValueError:
        detail = response.text[:200]
    return (
        f"{response.request.method} {response.request.url.path} -> {response.status_code} {detail}"
    )


async def _remote_synced(client: httpx.AsyncClient) -> set[str]:
    """external_ids of documents this command uploaded earlier."""
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = (await _call(client, "GET", "/api/knowledge/docs", params=params)).json()
        ids.update(
            d["external_id"] for d in page["items"] if d.get("metadata", {}).get("source") == SOURCE
        )
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def sync_folder(
    client: httpx.AsyncClient,
    root: Path,
    *,
    prune: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> SyncReport:
    """Upload `root` through `client` (already carrying the API key and base URL)."""
    docs, skipped = collect(root)
    report = SyncReport(skipped=skipped)
    limits = (await _call(client, "GET", "/api/subscription")).json()["limits"]
    too_big = [d.path for d in docs if len(d.content) > limits["doc_chars"]]
    if too_big:
        raise SyncError(
            f"{too_big[0]} (and {len(too_big) - 1} more) over the plan's {limits['doc_chars']} characters"
            if len(too_big) > 1
            else f"{too_big[0]} is over the plan's {limits['doc_chars']} characters"
        )
    batch = max(1, int(limits["batch_items"]))
    done = 0
    for start in range(0, len(docs), batch):
        part = docs[start : start + batch]
        body = {"items": [d.item() for d in part]}
        summary = (await _call(client, "PUT", "/api/knowledge/docs", json=body)).json()["summary"]
        report.created += summary["created"]
        report.updated += summary["updated"]
        report.no_op += summary["no_op"]
        done += len(part)
        if on_progress:
            on_progress(done, len(docs))
    if prune:
        local = {d.external_id for d in docs}
        for ext_id in sorted(await _remote_synced(client) - local):
            await _call(
                client, "DELETE", f"/api/knowledge/docs/by-external-id/{quote(ext_id, safe='')}"
            )
            report.deleted += 1
    return report
