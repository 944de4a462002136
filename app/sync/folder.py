"""A folder as documents: which files, their text, their ids, and every file left out with why."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from app.client import DocInput
from app.sync.extract import Unreadable, extract_data, file_title, read_bytes
from app.sync.ids import external_id_for
from app.text import plural

#: `metadata.synced_by` of every document sync uploads; `--prune` touches no other document.
SYNCED_BY = "personaizer-sync"


class SyncError(Exception):
    """A clean failure; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    reason: str
    #: The file is still there (too large, unreadable): `--prune` must keep its document.
    external_id: str | None = None
    #: The reason without what is particular to this file (`detail`): what skips are grouped
    #: by. None: the reason itself.
    group: str | None = None
    detail: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def skip_groups(skipped: list[Skipped], *, names: int | None = 5) -> list[str]:
    """The skipped files as one line per reason, most frequent first, each with its count and
    the files (the first `names` of them; None: all). A long reason, such as the list of
    supported types, is printed once, however many files it left out."""
    groups: dict[str, list[Skipped]] = {}
    for s in skipped:
        groups.setdefault(s.group or s.reason, []).append(s)
    lines = []
    for reason, files in sorted(groups.items(), key=lambda g: -len(g[1])):
        shown = [f"{s.path} ({s.detail})" if s.detail else s.path for s in files[:names]]
        if len(files) > len(shown):
            shown.append(f"and {len(files) - len(shown)} more")
        lines.append(f"{reason} ({plural(len(files), 'file')}): {', '.join(shown)}")
    return lines


@dataclass
class Folder:
    root: Path
    source: str
    docs: list[DocInput] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def present_ids(self) -> set[str]:
        """Ids of every file that exists, uploaded or not: what `--prune` keeps."""
        return {d.external_id for d in self.docs} | {
            s.external_id for s in self.skipped if s.external_id is not None
        }


#: At the folder's root: files left out, in gitignore's syntax (globs, `**`, a trailing `/` for
#: folders, `!` to take one back, `#` comments).
IGNORE_FILE = ".personaizerignore"


class Rules:
    """What the operator left out: each `--exclude GLOB`, then the folder's IGNORE_FILE. Each
    excluded path is reported with the rule that excluded it. An excluded folder is not entered
    (as in git, a `!` cannot take back a file inside an excluded folder)."""

    def __init__(self, root: Path, exclude: Sequence[str] = ()) -> None:
        self.rules: list[tuple[str, pathspec.GitIgnoreSpec]] = []
        for glob in exclude:
            try:
                spec = pathspec.GitIgnoreSpec.from_lines([glob])
            except ValueError as exc:
                raise SyncError(f"--exclude {glob!r}: {exc}") from exc
            self.rules.append((f"excluded by --exclude {glob}", spec))
        ignore = root / IGNORE_FILE
        if ignore.is_file() and not ignore.is_symlink():
            try:
                lines = ignore.read_text("utf-8").splitlines()
                spec = pathspec.GitIgnoreSpec.from_lines(lines)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise SyncError(f"{ignore}: {exc}") from exc
            self.rules.append((f"excluded by {IGNORE_FILE}", spec))

    def why(self, rel: str) -> str | None:
        """Why `rel` (a folder's ends in `/`) is excluded, or None."""
        for reason, spec in self.rules:
            if spec.match_file(rel):
                return reason
        return None


def _files(root: Path, skipped: list[Skipped], rules: Rules) -> list[tuple[Path, tuple[int, int]]]:
    """Regular files under `root`, sorted, each with its `(st_dev, st_ino)` (so that reading
    can check it is still the file listed). Hidden entries (`.git/`, `.env`) and excluded ones
    are listed as skipped once per entry, not once per file inside; so is every link (`_link`)."""
    real_root = root.resolve()
    found: list[tuple[Path, tuple[int, int]]] = []
    # followlinks=False: a link to a folder is in `dirs` but never entered.
    for here, dirs, files in os.walk(root):
        base = Path(here)
        entered = []
        for name in sorted(dirs):
            path = base / name
            rel = _rel(path, root) + "/"
            if name.startswith("."):
                skipped.append(Skipped(rel, "hidden folder, not read"))
            elif (excluded := rules.why(rel)) is not None:
                skipped.append(Skipped(rel, excluded))
            elif path.is_symlink():
                skipped.append(Skipped(rel, _link(path, real_root)))
            else:
                entered.append(name)
        dirs[:] = entered
        for name in files:
            path = base / name
            if base == root and name == IGNORE_FILE:
                continue  # the rules themselves, not a document nor a skip worth telling
            if name.startswith("."):
                skipped.append(Skipped(_rel(path, root), "hidden file, not read"))
                continue
            if (excluded := rules.why(_rel(path, root))) is not None:
                skipped.append(Skipped(_rel(path, root), excluded))
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:  # deleted since it was listed: nothing to sync
                continue
            if stat.S_ISLNK(st.st_mode):
                skipped.append(Skipped(_rel(path, root), _link(path, real_root)))
            elif stat.S_ISREG(st.st_mode):
                found.append((path, (st.st_dev, st.st_ino)))
            else:
                skipped.append(Skipped(_rel(path, root), "not a regular file"))
    return sorted(found)


def _link(path: Path, real_root: Path) -> str:
    """Why the link at `path` is not followed. A link out of the folder would read (and upload)
    whatever it points to; a link inside it would upload its target twice, or loop forever on
    a cycle, while the target is read anyway at its own path."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        return "link loop, not followed"
    if not target.is_relative_to(real_root):
        return "link outside the folder"
    if not target.exists():
        return "broken link"
    if target == real_root:
        return "link to the folder itself, not followed"
    return f"link to {target.relative_to(real_root).as_posix()}, not followed: it is read at its own path"


#: Files of a repository that are not its documentation: the name before the first dot.
_BUILD_NAMES = frozenset({"makefile", "gnumakefile", "license", "licence", "copying", "cname"})
_SHELL_SUFFIXES = frozenset({".sh", ".bash", ".zsh", ".ksh"})
_SHELL_SHEBANG = re.compile(rb"#![ \t]*\S*/(?:env[ \t]+)?(?:ba|z|k|da|fi)?sh\b")


def _build_file(name: str, data: bytes) -> bool:
    """Makefiles, licences, a GitHub Pages CNAME and shell scripts: text, but nothing anyone
    asks a persona about; now that any text file is read, they are left out by name."""
    if name.split(".", 1)[0].lower() in _BUILD_NAMES:
        return True
    return Path(name).suffix.lower() in _SHELL_SUFFIXES or bool(_SHELL_SHEBANG.match(data))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def collect(
    root: Path,
    *,
    source: str,
    doc_chars: int | None = None,
    exclude: Sequence[str] = (),
    on_file: Callable[[int, int, str], None] | None = None,
) -> Folder:
    """Read every file under `root` into a document of `source`. A file over `doc_chars`
    characters (the plan's limit) is skipped with its reason; so is one excluded by a glob of
    `exclude` or by the folder's IGNORE_FILE (and, being excluded, its document is pruned)."""
    if not root.is_dir():
        raise SyncError(f"{root} is not a folder")
    folder = Folder(root=root, source=source)
    files = _files(root, folder.skipped, Rules(root, exclude))
    seen: dict[str, str] = {}
    for n, (path, identity) in enumerate(files, 1):
        rel = _rel(path, root)
        if on_file is not None:
            on_file(n, len(files), rel)
        ext_id = external_id_for(source, rel)
        if ext_id in seen:  # takes a 48-bit digest collision; see app/sync/ids.py
            raise SyncError(f"{seen[ext_id]} and {rel} both map to external_id {ext_id!r}")
        seen[ext_id] = rel
        try:
            data = read_bytes(path, identity=identity)
            if _build_file(path.name, data):
                folder.skipped.append(Skipped(rel, "build or licence file", ext_id))
                continue
            found = extract_data(path.name, data)
        except Unreadable as exc:
            folder.skipped.append(Skipped(rel, str(exc), ext_id, group=exc.group))
            continue
        except OSError as exc:
            folder.skipped.append(Skipped(rel, f"cannot read: {exc.strerror or exc}", ext_id))
            continue
        if doc_chars is not None and len(found.text) > doc_chars:
            folder.skipped.append(
                Skipped(
                    rel,
                    f"{len(found.text):,} characters, over the plan's doc_chars of {doc_chars:,}",
                    ext_id,
                    group=f"over the plan's doc_chars of {doc_chars:,}",
                    detail=f"{len(found.text):,} characters",
                )
            )
            continue
        folder.docs.append(
            DocInput(
                external_id=ext_id,
                title=found.title or file_title(path.name),
                content=found.text,
                metadata={"source": source, "path": rel, "synced_by": SYNCED_BY},
            )
        )
    return folder
