"""Operator commands that cannot hurt data: data-dir safety, one-line errors, passwords,
deleting a user with their data, a busy port, and `serve --demo` restarts."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
import sqlean
import sqlite_vec

from app.client import ApiError, Client
from app.services import accounts
from app.services.demo import CREDENTIALS_FILE, DEMO_EMAIL, ensure_demo_account
from tests.conftest import AppFactory
from tests.support.live import (
    LiveServer,
    clean_env,
    free_port,
    personaizer,
    start_server,
    stop_server,
)


def one_error_line(r: object, status: int = 1) -> str:
    """The command failed with `status` and said so in exactly one line on stderr."""
    assert r.returncode == status, (r.stdout, r.stderr)  # type: ignore[attr-defined]
    stderr: str = r.stderr  # type: ignore[attr-defined]
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr.strip()


# Every command on data goes through one check (`run_with_runtime`); one or two per group.
DATA_COMMANDS = [
    ["users", "create", "new@example.com"],
    ["users", "set-password", "new@example.com"],
    ["users", "delete", "new@example.com", "--yes"],
    ["keys", "create", "new@example.com"],
]


def test_only_serve_and_init_create_a_database(tmp_path: Path) -> None:
    empty = tmp_path / "typo"
    for command in DATA_COMMANDS:
        r = personaizer(*command, "--data-dir", str(empty), stdin="a long password\n")
        line = one_error_line(r)
        assert f"no database at {empty.resolve()}/personaizer.db" in line, line
        assert "personaizer init" in line
    assert not empty.exists()  # not even the folder

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder", "utf-8")
    for command in (["users", "list"], ["init"]):
        line = one_error_line(personaizer(*command, "--data-dir", str(a_file)))
        assert line == f"error: {a_file} is a file, not a data folder (check --data-dir)"

    r = personaizer("init", "--data-dir", str(empty))
    assert r.returncode == 0 and "database ready at" in r.stdout
    assert (empty / "personaizer.db").is_file()
    r = personaizer("init", "--data-dir", str(empty))
    assert r.returncode == 0 and "existed already" in r.stdout
    assert personaizer("users", "list", "--data-dir", str(empty)).returncode == 0

    # The same safety through --database-url: a missing SQLite file is not created.
    missing = tmp_path / "elsewhere.db"
    line = one_error_line(personaizer("users", "list", "--database-url", f"sqlite:///{missing}"))
    assert "no database at" in line and not missing.exists()


def test_usage_mistakes_are_one_line_too(tmp_path: Path) -> None:
    assert "Missing argument" in one_error_line(personaizer("users", "create"), status=2)
    assert "No such option: --bogus" in one_error_line(
        personaizer("users", "list", "--bogus"), status=2
    )
    r = personaizer()
    assert r.returncode == 0 and "Usage: personaizer" in r.stdout and r.stderr == ""


@pytest.mark.anyio
@pytest.mark.engines("sqlite")  # the CLI and the app share a data dir's file
async def test_set_password_lets_a_user_sign_in(tmp_path: Path, make_app: AppFactory) -> None:
    data = tmp_path / "data"
    assert personaizer("init", "--data-dir", str(data)).returncode == 0
    assert personaizer("users", "create", "p@example.com", "--data-dir", str(data)).returncode == 0
    # `users create --password-stdin` on an existing user cannot help; set-password can.
    line = one_error_line(
        personaizer(
            "users", "set-password", "p@example.com", "--data-dir", str(data), stdin="short\n"
        )
    )
    assert "8 characters" in line
    line = one_error_line(
        personaizer(
            "users", "set-password", "x@example.com", "--data-dir", str(data), stdin="long enough\n"
        )
    )
    assert "x@example.com" in line
    r = personaizer(
        "users",
        "set-password",
        "p@example.com",
        "--data-dir",
        str(data),
        stdin="correct horse battery\n",
    )
    assert r.returncode == 0 and "password set for p@example.com" in r.stdout

    app = await make_app(data_dir=data)
    user = await accounts.login(
        runtime=app.state.runtime, email="p@example.com", password="correct horse battery"
    )
    assert user.email == "p@example.com"


def _rows(db: Path, sql: str, *args: object) -> int:
    conn = sqlean.connect(str(db))
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def test_users_delete_takes_their_data_and_only_theirs(live_server: LiveServer) -> None:
    gone_key = live_server.new_key("leaving@example.com")
    kept_key = live_server.new_key("staying@example.com")
    for key, words in ((gone_key, "leaving"), (kept_key, "staying")):
        with Client(live_server.url, key) as api:
            api.upsert_docs(
                [
                    {"external_id": f"{words}-{i}", "content": f"{words} document {i}"}
                    for i in range(3)
                ]
            )
            persona = api.create_persona(name=words)
            api.set_persona_knowledge(persona.id, [f"{words}-0"])
    db = live_server.data_dir / "personaizer.db"
    user_id = _rows(db, "SELECT id FROM users WHERE email = ?", "leaving@example.com")
    assert _rows(db, "SELECT count(*) FROM chunk_vectors WHERE user_id = ?", user_id) == 3

    line = one_error_line(live_server.run("users", "delete", "leaving@example.com"))
    assert line == (
        "error: leaving@example.com has 1 key, 3 documents and 1 persona; "
        "add --yes to delete the user with all of it"
    )
    with Client(live_server.url, gone_key) as api:
        assert api.list_docs().total == 3  # nothing happened without --yes

    r = live_server.run("users", "delete", "leaving@example.com", "--yes")
    assert r.returncode == 0, r.stderr
    assert "deleted leaving@example.com with 1 key, 3 documents and 1 persona" in r.stdout
    with Client(live_server.url, gone_key) as api, pytest.raises(ApiError) as caught:
        api.list_docs()
    assert caught.value.code == "auth.unauthorized"
    for table in ("knowledge_docs", "personas", "api_keys", "chunks"):
        assert _rows(db, f"SELECT count(*) FROM {table} WHERE user_id = ?", user_id) == 0
    assert _rows(db, "SELECT count(*) FROM chunk_vectors WHERE user_id = ?", user_id) == 0
    for table in ("chunk_terms", "chunk_postings", "keyword_df", "keyword_stats"):
        assert _rows(db, f"SELECT count(*) FROM {table} WHERE user_id = ?", user_id) == 0

    with Client(live_server.url, kept_key) as api:
        assert api.list_docs().total == 3
        assert api.search("staying document 2").results[0].external_id == "staying-2"
    assert "No user" in one_error_line(
        live_server.run("users", "delete", "leaving@example.com", "--yes")
    )


def test_serve_reports_a_busy_port_before_claiming_to_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = personaizer("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert one_error_line(r) == (
        f"error: port {port} on 127.0.0.1 is already in use (is another server running?)"
    )
    assert "listening" not in r.stdout
    # Nothing was made for a server that never started: no empty data dir left behind.
    assert not (tmp_path / "data").exists()


def test_serve_on_onnx_without_its_packages_is_one_line(tmp_path: Path) -> None:
    """PERSONAIZER_ENCODER=onnx where onnxruntime cannot be imported (hidden from this process,
    installed or not): the extra to install, named before anything starts, not a traceback."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["onnxruntime"] = None\n')
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH", "")) if p)
    env = clean_env(PERSONAIZER_ENCODER="onnx", PYTHONPATH=path)
    r = personaizer("serve", "--port", "0", "--data-dir", str(tmp_path / "data"), env=env)
    line = one_error_line(r)
    assert "onnxruntime" in line and "pip install 'personaizer[onnx]'" in line, line
    assert "listening" not in r.stdout

    r = personaizer(
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        env=clean_env(PERSONAIZER_ENCODER="tensorflow"),
    )
    assert "invalid configuration: encoder" in one_error_line(r)


def _demo_credentials(output: str) -> tuple[str, str]:
    password = re.search(rf"Demo user: {re.escape(DEMO_EMAIL)}  password: (\S+)", output)
    key = re.search(r"Demo API key: (\S+)", output)
    assert password and key, output
    return password.group(1), key.group(1)


@pytest.mark.anyio
@pytest.mark.engines("sqlite")  # the CLI and the app share a data dir's file
async def test_demo_restart_reuses_what_works(tmp_path: Path, make_app: AppFactory) -> None:
    data = tmp_path / "data"
    first = start_server(data, "--demo", port=free_port(), model=False)
    password, key = _demo_credentials(stop_server(first))
    second = start_server(data, "--demo", port=free_port(), model=False)
    try:
        with Client(second.url, key) as api:
            assert api.subscription().plan.id == "pro"  # the printed key works
    finally:
        output = stop_server(second)
    assert _demo_credentials(output) == (password, key)
    assert "its password and key are the ones saved in" in output
    keys = personaizer("keys", "list", DEMO_EMAIL, "--json", "--data-dir", str(data))
    assert keys.stdout.count('"name": "demo"') == 1  # no new key per start

    app = await make_app(data_dir=data)
    runtime = app.state.runtime
    assert (
        await accounts.login(runtime=runtime, email=DEMO_EMAIL, password=password)
    ).email == DEMO_EMAIL
    # The saved file gone (or its key disabled): reset, say so, and still one demo key.
    (data / CREDENTIALS_FILE).unlink()
    reset = await ensure_demo_account(runtime, data / CREDENTIALS_FILE)
    assert reset.how == "reset" and reset.key != key
    await accounts.login(runtime=runtime, email=DEMO_EMAIL, password=reset.password)
    assert [k.name for k in await accounts.list_keys(runtime=runtime, email=DEMO_EMAIL)] == ["demo"]
    await accounts.disable_key(runtime=runtime, prefix=reset.key[:12])
    again = await ensure_demo_account(runtime, data / CREDENTIALS_FILE)
    assert again.how == "reset" and (
        await accounts.authenticate(runtime=runtime, api_key=again.key)
    )
