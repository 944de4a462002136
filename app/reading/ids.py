"""external_ids for synced files: readable, stable, and never shared by two paths.

`<source>:<part>:<part>...`, one part per path component:

- A component made only of `A-Z a-z 0-9 . _ -` is kept as it is (`guides/reset.md` in source
  `kb` is `kb:guides:reset.md`).
- Any other component (non-ASCII, spaces, `:`) becomes a readable ASCII slug, `--`, and 12 hex
  digits of the SHA-256 of the name, extension kept: `Reset password.md` ->
  `Reset-password--3c1e....md`, `日本語.txt` -> `x--9f2a....txt`. Names are NFC-normalized
  first, so the same name typed on macOS (NFD) and Linux gives the same id.
- A kept component never contains `--` + 12 hex digits + `.` or end (one that does is hashed
  too), and hashed ones always do: a kept and a hashed component cannot be equal, and two
  hashed ones are equal only if their 48-bit digests are. Components hold no `:`, so joining
  them is unambiguous.
- An id over 128 characters keeps its first characters and ends in a digest of the whole path.

`collect` still checks that no two files share an id (which would take a digest collision) and
refuses to go on if they do, rather than upload one file over another.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import PurePosixPath

MAX_ID = 128
MAX_SOURCE = 64
_KEEP = re.compile(r"^[A-Za-z0-9._-]+$")
_HASHED = re.compile(r"--[0-9a-f]{12}(?:\.|$)")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
SOURCE_RE = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_SOURCE}}}$")


def _digest(kind: str, text: str) -> str:
    return hashlib.sha256(f"{kind}\0{text}".encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    """ASCII letters, digits and `._-` only: accents dropped (é -> e), other runs -> `-`."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE_RUN.sub("-", folded).strip("-")


def id_part(name: str) -> str:
    """One path component as an id part (see the module docstring)."""
    name = unicodedata.normalize("NFC", name)
    if _KEEP.match(name) and not _HASHED.search(name):
        return name
    suffix = PurePosixPath(name).suffix
    stem = name[: -len(suffix)] if suffix else name
    ext = _slug(suffix[1:])
    return f"{_slug(stem)[:60] or 'x'}--{_digest('part', name)}" + (f".{ext[:16]}" if ext else "")


def external_id_for(source: str, relative: str) -> str:
    """The id of the file at `relative` (POSIX separators) synced into `source`."""
    relative = unicodedata.normalize("NFC", relative)
    ext_id = ":".join([source, *(id_part(p) for p in relative.split("/"))])
    if len(ext_id) <= MAX_ID:
        return ext_id
    tail = f"--{_digest('path', relative)}"
    return ext_id[: MAX_ID - len(tail)] + tail


def default_source(folder_name: str) -> str:
    """The source a folder syncs into when `--source` is not given: its name, as an id part."""
    part = id_part(folder_name or "root")
    if len(part) <= MAX_SOURCE:
        return part
    return f"{_slug(folder_name)[: MAX_SOURCE - 14] or 'x'}--{_digest('part', folder_name)}"
