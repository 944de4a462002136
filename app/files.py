"""Private files: the data directory and the database hold every tenant's data and the key and
password hashes, so what the server creates is readable by its own user only.

The data directory is made 0700 and the SQLite file 0600 before SQLite first opens it; SQLite
then gives its `-wal` and `-shm` files the database file's mode. A directory or file that exists
already is the operator's choice and is left as it is (a warning here would be printed by every
CLI command, whose stderr is one line on failure and nothing else).
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents, with the default mode) with mode 0700."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)  # mkdir's mode passes through the umask; say it exactly


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600, unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def prepare_sqlite_file(path: Path) -> None:
    """The directory of a SQLite database file and the (empty) file itself, both private."""
    private_dir(path.parent)
    private_file(path)
