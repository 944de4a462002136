"""`personaizer backup` and `restore` under load, against a real server process.

A backup taken while four clients write batches opens, passes `PRAGMA integrity_check`, is 0600,
holds every batch acknowledged before it started and tears none. A restore is refused while the
server runs (the database untouched); once it is stopped the restore puts the copy back, keeps the
replaced database as a .bak, and a server started on it serves exactly the copy."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import httpx

from tests.support.live import clean_env, personaizer, start_server, stop_server
from tests.support.writers import BatchWriters, assert_whole, stored_batches


def _integrity(database: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def test_backup_under_load_and_restore(tmp_path: Path) -> None:
    data = tmp_path / "data"
    database = data / "personaizer.db"
    copy = tmp_path / "backups" / "copy.db"
    copy.parent.mkdir()
    server = start_server(data)
    try:
        key = server.new_key("backup@example.com")
        writers = BatchWriters(server.url, key).start()
        try:
            writers.wait_for(8)
            before = writers.snapshot()
            made = server.run("backup", str(copy))
            # Writers go on after the copy: at most one batch per writer was in flight during it,
            # so five more acknowledged make the live database hold batches the copy cannot.
            writers.wait_for(len(before) + 5)
        finally:
            writers.stop()
        assert made.returncode == 0, made.stderr
        assert f"backed up {database}" in made.stdout

        refused = server.run("restore", str(copy))
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: a server is using"), refused.stderr
        assert not list(data.glob("*.bak"))
    finally:
        stop_server(server)

    assert _integrity(copy) == ["ok"]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    copied = stored_batches(copy)
    assert_whole(copied, acknowledged=before, attempted=writers.attempted)
    live = stored_batches(database)
    assert len(live) > len(copied)

    # Even from a database an operator left readable to others, the .bak (every tenant's data
    # and key hashes) is the owner's alone.
    database.chmod(0o644)
    restored = server.run("restore", str(copy))
    assert restored.returncode == 0, restored.stderr
    [kept] = data.glob("personaizer.db.*.bak")
    assert stored_batches(kept) == live  # the replaced database, whole, WAL included
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stored_batches(database) == copied

    again = start_server(data)
    try:
        with httpx.Client(base_url=again.url, headers={"X-Api-Key": key}, timeout=60) as api:
            listed = api.get("/api/knowledge/docs")
            assert listed.status_code == 200, listed.text
            assert listed.json()["total"] == sum(copied.values())
    finally:
        stop_server(again)


def test_backup_and_restore_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = personaizer("backup", str(tmp_path / "x.db"), "--data-dir", str(data))
    assert missing.returncode == 1 and "no database at" in missing.stderr

    assert personaizer("init", "--data-dir", str(data)).returncode == 0
    first = personaizer("backup", str(tmp_path), "--data-dir", str(data))  # a folder: a new file
    assert first.returncode == 0, first.stderr
    [made] = tmp_path.glob("personaizer-*.db")
    again = personaizer("backup", str(made), "--data-dir", str(data))
    assert again.returncode == 1 and "exists already" in again.stderr
    # Into a folder that does not exist: that folder is named, not a temporary file.
    nowhere = tmp_path / "no-such-folder"
    lost = personaizer("backup", str(nowhere / "x.db"), "--data-dir", str(data))
    assert lost.returncode == 1
    assert lost.stderr.strip().splitlines() == [
        f"error: {nowhere} does not exist: create the folder first, or name another"
    ]

    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    bad = personaizer("restore", str(junk), "--data-dir", str(data))
    assert bad.returncode == 1 and "not a usable SQLite database" in bad.stderr
    assert not list(data.glob("*.bak"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "personaizer.db").write_text("not a database either")
    over = personaizer("restore", str(made), "--data-dir", str(broken))
    assert over.returncode == 1 and "move it aside yourself" in over.stderr
    assert (broken / "personaizer.db").read_text() == "not a database either"

    url = "postgresql://user:secret@127.0.0.1:1/db"
    for command in ("backup", "restore"):
        r = personaizer(command, str(made), "--database-url", url, env=clean_env())
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            "error: on PostgreSQL use pg_dump to back up and pg_restore to restore "
            "(see docs/scaling.md)"
        ]
