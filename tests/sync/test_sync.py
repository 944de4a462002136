"""`personaizer sync`: ids, extraction, and whole syncs, through the library over ASGI and
through the real CLI against a real server process."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.client import ApiError, AsyncClient, Client
from app.models.base import EXTERNAL_ID_RE
from app.sync import SyncError, collect, external_id_for, skip_groups, sync_folder
from app.sync.extract import Unreadable, decode, extract, file_title
from tests.conftest import new_key
from tests.support.documents import (
    HTML_PAGE,
    LATIN1_TEXT,
    break_docx,
    make_docx,
    make_pdf,
    mixed_folder,
)
from tests.support.live import LiveServer, free_port, personaizer

# --- ids ----------------------------------------------------------------------------------


def test_clean_paths_keep_their_names() -> None:
    assert external_id_for("kb", "guides/reset.md") == "kb:guides:reset.md"
    assert external_id_for("kb", "README") == "kb:README"


def test_non_ascii_names_stay_distinct_readable_and_stable() -> None:
    names = [
        "日本語.txt",
        "中文.txt",
        "日本.txt",
        "a b.md",
        "a-b.md",
        "a:b.md",
        "a/b.md",
        "café.md",
    ]
    ids = [external_id_for("kb", n) for n in names]
    assert len(set(ids)) == len(ids)
    assert all(EXTERNAL_ID_RE.match(i) for i in ids)
    assert ids[0].endswith(".txt") and ids[3].startswith("kb:a-b--")
    assert ids[7].startswith("kb:cafe--")  # readable: the accent dropped, not the letter
    assert ids[5] != ids[6]  # a ':' in a name is not a folder separator
    # The same name typed on macOS (decomposed) and Linux (composed) is the same document.
    assert external_id_for("kb", unicodedata.normalize("NFD", "café.md")) == ids[7]
    assert external_id_for("kb", "日本語.txt") == ids[0]  # stable across runs


def test_a_name_that_looks_hashed_cannot_collide() -> None:
    hashed = external_id_for("kb", "日本語.txt")
    lookalike = hashed.removeprefix("kb:")
    assert external_id_for("kb", lookalike) != hashed


def test_long_paths_fit_and_stay_distinct() -> None:
    deep = "/".join(["folder-with-a-long-name"] * 8)
    a, b = external_id_for("kb", f"{deep}/a.md"), external_id_for("kb", f"{deep}/b.md")
    assert a != b and len(a) <= 128 and len(b) <= 128
    assert EXTERNAL_ID_RE.match(a) and a.startswith("kb:folder-with-a-long-name:")


# --- extraction ---------------------------------------------------------------------------


def test_extracts_every_supported_kind(tmp_path: Path) -> None:
    pdf = extract(make_pdf(tmp_path / "a.pdf", ["First line of text", "Second line"], "Leaflet"))
    assert pdf.text == "First line of text\nSecond line" and pdf.title == "Leaflet"

    docx = extract(make_docx(tmp_path / "b.docx", "Spec", ["USB-C port."]))
    assert "USB-C port." in docx.text and "Warranty | five years" in docx.text
    assert docx.title == "Spec"

    (tmp_path / "c.html").write_text(HTML_PAGE, "utf-8")
    html = extract(tmp_path / "c.html")
    assert html.title == "Returns policy"
    assert "Return any item within 30 days for a full refund." in html.text
    assert "trackingSecret" not in html.text and "inline-script-text" not in html.text
    assert "color: red" not in html.text

    (tmp_path / "d.rst").write_text("Manual\n======\n\nBody.\n", "utf-8")
    assert extract(tmp_path / "d.rst").title == "Manual"
    (tmp_path / "LICENSE").write_text("Permission is granted.\n", "utf-8")
    assert extract(tmp_path / "LICENSE").text == "Permission is granted.\n"


def _title(path: Path, text: str) -> str | None:
    path.write_text(text, "utf-8")
    return extract(path).title


def test_markdown_titles_come_from_its_structure(tmp_path: Path) -> None:
    md = tmp_path / "a.md"
    front = '---\nlayout: post\ntitle: "Install: the guide"\n---\n\n# Other heading\n'
    assert _title(md, front) == "Install: the guide"
    assert _title(md, "---\ntags: [a]\n---\n# After the front matter\n") == "After the front matter"
    code = (
        "```sh\n# install it first\npip install lamp\n```\n\n"
        "~~~~\n# also code\n~~~~\n\n"
        "    # indented code\n\n"
        "Real title\n==========\n\nBody.\n"
    )
    assert _title(md, code) == "Real title"
    assert _title(md, "Intro.\n\n## Section\n\n# Main topic #\n") == "Main topic"
    assert _title(md, "## Only a section\n\ntext\n") == "Only a section"
    assert _title(md, "```\n# a comment, in a fence never closed\n") is None
    assert _title(md, "#hashtag, not a heading\n") is None


def test_a_title_from_the_file_name_drops_only_format_suffixes() -> None:
    assert file_title("notes.md") == "notes"
    assert file_title("notes.md.gz") == "notes"
    assert file_title("Guide.PDF") == "Guide"
    assert file_title("README.Debian") == "README.Debian"
    assert file_title("changelog.Debian.gz") == "changelog.Debian"
    assert file_title("v1.2 release") == "v1.2 release"
    assert file_title(".md") == ".md"


def test_rst_titles_are_section_titles(tmp_path: Path) -> None:
    rst = tmp_path / "a.rst"
    literal = "Example::\n\n    Not a title\n    ===========\n\n"
    assert _title(rst, literal + "=========\n Overlined\n=========\n") == "Overlined"
    assert _title(rst, ".. title:: From the directive\n\nSection\n-------\n") == (
        "From the directive"
    )
    assert _title(rst, "A paragraph\nof two lines.\n\nSecond\n~~~~~~\n") == "Second"
    assert _title(rst, "Just text.\n") is None


def test_html_title_then_h1(tmp_path: Path) -> None:
    html = tmp_path / "a.html"
    page = "<html><head><title> </title></head><body><svg><title>icon</title></svg>"
    assert _title(html, page + "<h1>The <b>real</b> title</h1><p>x</p></body></html>") == (
        "The real title"
    )


def test_pdf_titles_and_hyphenated_words(tmp_path: Path) -> None:
    lines = ["Speech recognition", "Modern speech recog-", "nition works well."]
    pdf = extract(make_pdf(tmp_path / "a.pdf", lines))
    assert pdf.title == "Speech recognition"
    assert pdf.text == "Speech recognition\nModern speech recognition works well."
    junk = extract(make_pdf(tmp_path / "b.pdf", lines, "Microsoft Word - draft3.docx"))
    assert junk.title == "Speech recognition"
    long_first = extract(make_pdf(tmp_path / "c.pdf", ["This first line is a sentence."]))
    assert long_first.title is None
    # USB-C stays one word with its hyphen: only a lowercase continuation is joined.
    assert (
        extract(make_pdf(tmp_path / "d.pdf", ["Port: USB-", "C only"])).text == "Port: USB-\nC only"
    )


def test_docx_title_from_properties_then_first_heading(tmp_path: Path) -> None:
    path = make_docx(tmp_path / "a.docx", "Lamp care", ["Dust it."], properties=False)
    assert extract(path).title == "Lamp care"
    path = make_docx(
        tmp_path / "b.docx", "Cleaning", ["Dust it."], properties=False, heading_level=2
    )
    assert extract(path).title == "Cleaning"


def test_a_file_without_a_title_is_named_after_the_file(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    root.mkdir()
    (root / "how-to.md").write_text("```\n# not this\n```\nJust text.\n", "utf-8")
    assert [d.title for d in collect(root, source="kb").docs] == ["how-to"]


def test_other_encodings_are_detected_not_refused() -> None:
    assert decode(LATIN1_TEXT.encode("latin-1")) == LATIN1_TEXT
    assert decode("Grüße aus München".encode("cp1252")) == "Grüße aus München"
    assert decode("\ufeffwith a BOM".encode()) == "with a BOM"
    assert decode("UTF-16 text".encode("utf-16")) == "UTF-16 text"


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    cases = {
        "empty.txt": (b"  \n", "empty"),
        "blob": (b"\x00\x01\x02binary" * 50, "binary"),
        "x.png": (b"\x89PNG", "unsupported type .png"),
        "broken.pdf": (b"%PDF-1.4 not really", "not a readable PDF"),
        "broken.docx": (b"PK not a zip", "not a readable DOCX"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Unreadable, match=re.escape(reason)):
            extract(tmp_path / name)


def test_collect_lists_every_skipped_file(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "kb")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x", "utf-8")
    folder = collect(root, source="kb", doc_chars=100_000)
    paths = sorted(d.metadata["path"] for d in folder.docs)
    assert paths == sorted(
        [
            "README", "café menu.md", "guide.md", "latin1.txt", "leaflet.pdf", "manual.rst",
            "notes.txt", "returns.html", "spec.docx", "sub/deep.md", "中文.txt", "日本.txt",
            "日本語.txt",
        ]
    )  # fmt: skip
    reasons = {s.path: s.reason for s in folder.skipped}
    assert reasons.keys() == {".git/", "big.txt", "empty.txt", "image.png"}
    assert "over the plan's doc_chars of 100,000" in reasons["big.txt"]
    assert reasons["empty.txt"] == "empty" and "unsupported type .png" in reasons["image.png"]
    latin = next(d for d in folder.docs if d.metadata["path"] == "latin1.txt")
    assert latin.content == LATIN1_TEXT
    assert all(d.metadata["source"] == "kb" for d in folder.docs)


def test_skips_are_grouped_by_reason_each_reason_once(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.gif"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (tmp_path / "empty.md").write_text("", "utf-8")
    (tmp_path / "big.txt").write_text("x" * 50, "utf-8")
    folder = collect(tmp_path, source="kb", doc_chars=10)
    lines = skip_groups(folder.skipped)
    assert lines[0].startswith("unsupported type (sync reads md, ")
    assert lines[0].endswith("(3 files): a.png, b.png, c.gif")
    assert "empty (1 file): empty.md" in lines
    assert "over the plan's doc_chars of 10 (1 file): big.txt (50 characters)" in lines
    assert sum("sync reads" in line for line in lines) == 1
    assert skip_groups(folder.skipped, names=2)[0].endswith("a.png, b.png, and 1 more")


def test_exclude_globs_and_the_ignore_file(tmp_path: Path) -> None:
    for rel in (
        "keep.md", "debug.log", "keep.log", "build/out.md", "docs/guide.md",
        "docs/drafts/wip.md", "docs/a/b/draft-1.md", "notes/private.md",
    ):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"text of {rel}", "utf-8")
    (tmp_path / ".personaizerignore").write_text(
        "# logs, but not this one\n*.log\n!keep.log\nbuild/\ndocs/**/draft-*\n", "utf-8"
    )
    folder = collect(tmp_path, source="kb", exclude=["drafts/", "notes/private.md"])
    uploaded = sorted(d.metadata["path"] for d in folder.docs)
    assert uploaded == ["docs/guide.md", "keep.log", "keep.md"]
    reasons = {s.path: s.reason for s in folder.skipped}
    assert reasons == {
        "build/": "excluded by .personaizerignore",  # a folder: one entry, not entered
        "debug.log": "excluded by .personaizerignore",
        "docs/a/b/draft-1.md": "excluded by .personaizerignore",
        "docs/drafts/": "excluded by --exclude drafts/",
        "notes/private.md": "excluded by --exclude notes/private.md",
    }
    # Excluded files have no id to keep: --prune deletes what an earlier sync uploaded of them.
    assert all(s.external_id is None for s in folder.skipped)


def test_a_file_no_parser_can_read_is_a_skip_not_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    root.mkdir()
    (root / "ok.md").write_text("# Fine\n\nStill uploaded.\n", "utf-8")
    break_docx(root / "half.docx", make_docx(tmp_path / "whole.docx", "Spec", ["Body."]))
    pdf = make_pdf(tmp_path / "whole.pdf", ["Some text"]).read_bytes()
    (root / "truncated.pdf").write_bytes(pdf[: len(pdf) // 3])
    (root / "zip.docx").write_bytes(_zip_of({"hello.txt": b"not a Word document"}))
    folder = collect(root, source="kb")
    assert [d.metadata["path"] for d in folder.docs] == ["ok.md"]
    reasons = {s.path: s.reason for s in folder.skipped}
    assert reasons["half.docx"].startswith("not a readable DOCX (XMLSyntaxError")
    assert reasons["truncated.pdf"].startswith("not a readable PDF")
    assert reasons["zip.docx"].startswith("not a readable DOCX")
    # Still there, only unreadable today: --prune keeps their documents.
    assert all(s.external_id is not None for s in folder.skipped)


def test_a_sync_never_reads_outside_its_folder(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nthe root password\n", "utf-8")
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "ok.md").write_text("# Fine\n\nuploaded.\n", "utf-8")
    (root / "sub" / "b.md").write_text("# B\n\nalso uploaded.\n", "utf-8")
    (root / "leak.md").symlink_to(outside / "secret.md")
    (root / "relative.md").symlink_to(Path("..") / "private" / "secret.md")
    (root / "private").symlink_to(outside, target_is_directory=True)
    (root / "alias.md").symlink_to("ok.md")  # inside: read once, at its own path
    (root / "sub" / "again").symlink_to("..", target_is_directory=True)  # a cycle
    (root / "gone.md").symlink_to("missing.md")
    folder = collect(root, source="kb")
    assert sorted(d.metadata["path"] for d in folder.docs) == ["ok.md", "sub/b.md"]
    assert not any("root password" in d.content for d in folder.docs)
    reasons = {s.path: s.reason for s in folder.skipped}
    assert reasons == {
        "leak.md": "link outside the folder",
        "relative.md": "link outside the folder",
        "private/": "link outside the folder",
        "alias.md": "link to ok.md, not followed: it is read at its own path",
        "sub/again/": "link to the folder itself, not followed",
        "gone.md": "broken link",
    }

    # Given as a link itself, the folder is where the link points.
    via = tmp_path / "via"
    via.symlink_to(root, target_is_directory=True)
    assert sorted(d.metadata["path"] for d in collect(via, source="kb").docs) == [
        "ok.md",
        "sub/b.md",
    ]


def test_a_file_swapped_for_a_link_while_syncing_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("the root password", "utf-8")
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (root / name).write_text(f"text of {name}", "utf-8")

    def swap(done: int, total: int, path: str) -> None:
        # Between the listing and the reading: a file, then a whole folder, become links out.
        if path == "a.txt":
            (root / "b.txt").unlink()
            (root / "b.txt").symlink_to(tmp_path / "secret.txt")
            # The listed c.txt is kept alive (moved), so the new one cannot reuse its inode.
            (root / "sub").rename(tmp_path / "moved")
            (tmp_path / "other").mkdir()
            (tmp_path / "other" / "c.txt").write_text("the root password", "utf-8")
            (root / "sub").symlink_to(tmp_path / "other", target_is_directory=True)

    folder = collect(root, source="kb", on_file=swap)
    assert [d.metadata["path"] for d in folder.docs] == ["a.txt"]
    reasons = {s.path: s.reason for s in folder.skipped}
    assert reasons["b.txt"] == "replaced by a link since it was listed, not followed"
    assert reasons["sub/c.txt"] == "replaced since it was listed, not read"


def test_compressed_text_and_text_by_content(tmp_path: Path) -> None:
    import gzip

    root = tmp_path / "kb"
    root.mkdir()
    (root / "notes.md.gz").write_bytes(gzip.compress(b"# Notes\n\nKept compressed.\n"))
    (root / "log.txt.gz").write_bytes(gzip.compress(b"plain, no title\n"))
    (root / "cut.md.gz").write_bytes(gzip.compress(b"# x\n" * 100)[:20])
    (root / "data.json").write_text('{"lamp": "Aurora"}\n', "utf-8")
    (root / "blob.bin").write_bytes(bytes(range(1, 256)) * 4)
    (root / "Makefile").write_text("all:\n\ttrue\n", "utf-8")
    (root / "LICENSE").write_text("Permission is granted.\n", "utf-8")
    (root / "COPYING.LESSER").write_text("GNU terms.\n", "utf-8")
    (root / "CNAME").write_text("docs.example.com\n", "utf-8")
    (root / "deploy.sh").write_text("echo deploy\n", "utf-8")
    (root / "run").write_text("#!/usr/bin/env bash\necho run\n", "utf-8")
    folder = collect(root, source="kb")
    docs = {d.metadata["path"]: d for d in folder.docs}
    assert docs.keys() == {"notes.md.gz", "log.txt.gz", "data.json"}
    assert docs["notes.md.gz"].title == "Notes"
    assert docs["notes.md.gz"].content == "# Notes\n\nKept compressed.\n"
    assert docs["log.txt.gz"].title == "log" and docs["data.json"].title == "data"
    reasons = {s.path: s.reason for s in folder.skipped}
    assert reasons.pop("cut.md.gz").startswith("not a readable gzip")
    assert reasons.pop("blob.bin").startswith("unsupported type .bin")
    assert reasons == dict.fromkeys(
        ["Makefile", "LICENSE", "COPYING.LESSER", "CNAME", "deploy.sh", "run"],
        "build or licence file",
    )


def _zip_of(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


# --- whole syncs through the library (the app over ASGI) ----------------------------------


def _client(app: Starlette, key: str) -> AsyncClient:
    return AsyncClient("http://testserver", key, transport=httpx.ASGITransport(app=app))


async def _ids(api: AsyncClient) -> list[str]:
    return [d.external_id async for d in api.iter_docs()]


@pytest.mark.anyio
async def test_resync_is_free_and_prune_stays_in_its_source(app: Starlette, tmp_path: Path) -> None:
    key = await new_key(app, plan="pro")
    one = tmp_path / "one"
    two = tmp_path / "two"
    for root in (one, two):
        root.mkdir()
        (root / "a.md").write_text(f"# A\nalpha of {root.name}", "utf-8")
        (root / "b.txt").write_text(f"beta of {root.name}", "utf-8")
    async with _client(app, key) as api:
        await api.upsert_doc("one:manual", content="written by hand, not by sync")
        report = await sync_folder(api, one)
        assert (report.source, report.created) == ("one", 2)
        report = await sync_folder(api, two)
        assert report.created == 2  # same relative paths, other source: other documents

        embedded = app.state.runtime.embedder.stats.texts
        report = await sync_folder(api, one)
        assert (report.created, report.updated, report.no_op) == (0, 0, 2)
        assert app.state.runtime.embedder.stats.texts == embedded
        assert (report.sent, report.batches) == (0, 0)  # nothing even sent

        # A new title (same content) is a change the listing sees: sent, and named.
        (one / "a.md").write_text(f"# A2\nalpha of {one.name}", "utf-8")
        report = await sync_folder(api, one)
        assert (report.sent, report.updated_ids, report.no_op) == (1, ["one:a.md"], 1)

        # A file removed from `two`, a file grown too large in `two` (still there: kept).
        (two / "a.md").unlink()
        (two / "b.txt").write_text("y" * 500_001, "utf-8")
        (two / "c.md").write_text("gamma", "utf-8")
        report = await sync_folder(api, two, prune=True)
        assert (report.created, report.deleted) == (1, 1)
        assert (report.created_ids, report.deleted_ids) == (["two:c.md"], ["two:a.md"])
        assert [s.path for s in report.skipped] == ["b.txt"]
        assert await _ids(api) == [
            "one:a.md", "one:b.txt", "one:manual", "two:b.txt", "two:c.md",
        ]  # fmt: skip

        # An explicit --source; prune of an empty folder is refused, not a wipe-out.
        report = await sync_folder(api, one, source="shared", prune=True)
        assert report.created == 2 and report.deleted == 0
        for path in list(one.iterdir()):
            path.unlink()
        with pytest.raises(SyncError, match="refusing to --prune"):
            await sync_folder(api, one, prune=True)
        with pytest.raises(SyncError, match="--source"):
            await sync_folder(api, one, source="bad source")


@pytest.mark.anyio
async def test_strict_fails_before_uploading(app: Starlette, tmp_path: Path) -> None:
    key = await new_key(app, plan="free")
    root = tmp_path / "kb"
    root.mkdir()
    (root / "ok.md").write_text("fine", "utf-8")
    (root / "big.txt").write_text("x" * 100_001, "utf-8")
    async with _client(app, key) as api:
        with pytest.raises(SyncError, match=r"--strict: big.txt: 100,001 characters.*nothing"):
            await sync_folder(api, root, strict=True)
        assert await _ids(api) == []
        report = await sync_folder(api, root)
        assert report.created == 1 and [s.path for s in report.skipped] == ["big.txt"]


@pytest.mark.anyio
async def test_persona_gets_the_source_by_filter(app: Starlette, tmp_path: Path) -> None:
    key = await new_key(app, plan="pro")
    root = tmp_path / "support"
    root.mkdir()
    (root / "a.md").write_text("# Returns\nReturns take a week.", "utf-8")
    async with _client(app, key) as api:
        persona = await api.create_persona(name="Support")
        await api.upsert_doc("other", content="Returns elsewhere.", metadata={"source": "x"})
        report = await sync_folder(api, root, persona=persona.id)
        assert report.persona_id == persona.id
        assert report.knowledge_filter == {
            "metadata": {"source": "support"},
            "external_id_prefixes": [],
        }
        # A file synced later joins the persona with no further call.
        (root / "b.md").write_text("# Refunds\nRefunds take a week too.", "utf-8")
        await sync_folder(api, root)
        hits = await api.search("how long do returns and refunds take", k=10, persona_id=persona.id)
        assert sorted(h.external_id for h in hits.results) == ["support:a.md", "support:b.md"]
        assert (await api.get_persona(persona.id)).knowledge_count == 2
        with pytest.raises(ApiError):
            await sync_folder(api, root, persona="per_unknown")


# --- the real CLI against a real server ---------------------------------------------------


def sync_cli(server: LiveServer, key: str, root: Path, *args: str) -> Any:
    return personaizer("sync", str(root), "--api-key", key, "--url", server.url, *args, timeout=300)


def test_cli_syncs_a_real_folder(live_server: LiveServer, tmp_path: Path) -> None:
    key = live_server.new_key("sync-cli@example.com", plan="pro")
    root = mixed_folder(tmp_path / "handbook")
    r = sync_cli(live_server, key, root, "--batch-chars", "400")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("handbook: created 13, updated 0, unchanged 0, deleted 0")
    assert "skipped 3" in r.stdout
    # Without a terminal: a line per batch (batches cut at 400 characters), then the skipped.
    batches = [line for line in r.stderr.splitlines() if line.startswith("batch ")]
    assert len(batches) >= 3 and batches[-1].endswith("(13/13)")
    # Skips by reason, each reason once (the list of supported types is not repeated per file).
    assert "skipped 3 files:" in r.stderr
    assert (
        "  over the plan's doc_chars of 500,000 (1 file): big.txt (5,205,200 characters)"
        in r.stderr
    )
    assert "  empty (1 file): empty.txt" in r.stderr
    assert "  unsupported type (sync reads md, " in r.stderr and "(1 file): image.png" in r.stderr
    assert "created 13 documents (--verbose names them)" in r.stderr

    with Client(live_server.url, key) as api:
        docs = {d.metadata["path"]: d for d in api.iter_docs(include_content=True)}
        assert len(docs) == 13 and len({d.external_id for d in docs.values()}) == 13
        assert docs["returns.html"].title == "Returns policy"
        assert "trackingSecret" not in (docs["returns.html"].content or "")
        assert docs["leaflet.pdf"].content == "Aurora lamp leaflet\nThree colour temperatures."
        assert "USB-C port" in (docs["spec.docx"].content or "")
        assert docs["latin1.txt"].content == LATIN1_TEXT
        assert docs["日本語.txt"].content == "日本語のテキストです。\n"
        hit = api.search("crêpes au beurre", mode="keyword").results[0]
        assert hit.external_id == docs["latin1.txt"].external_id

    r = sync_cli(live_server, key, root)
    assert r.returncode == 0 and "created 0, updated 0, unchanged 13" in r.stdout
    # A re-run sends nothing: the server's hashes say every file is held as it is.
    assert "13 unchanged, nothing to upload" in r.stderr and "uploading" not in r.stderr
    assert "(0 requests," in r.stdout

    # One file edited: it alone is sent, and named.
    (root / "latin1.txt").write_text("crêpes au beurre, edited", "utf-8")
    r = sync_cli(live_server, key, root)
    assert r.returncode == 0 and "created 0, updated 1, unchanged 12" in r.stdout
    assert "uploading 1 document (" in r.stderr and "; 12 unchanged" in r.stderr
    assert "updated handbook:latin1.txt" in r.stderr

    (root / "notes.txt").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("notes of another folder", "utf-8")
    r = sync_cli(live_server, key, other, "--exclude", "*.txt")
    assert r.returncode == 0 and "excluded by --exclude *.txt (1 file): notes.txt" in r.stderr
    r = sync_cli(live_server, key, other, "--prune")
    assert r.returncode == 0 and "other: created 1, updated 0, unchanged 0, deleted 0" in r.stdout
    r = sync_cli(live_server, key, root, "--prune")
    assert "deleted 1" in r.stdout and "deleted handbook:notes.txt" in r.stderr
    with Client(live_server.url, key) as api:
        ids = {d.external_id for d in api.iter_docs()}
    assert "other:notes.txt" in ids and "handbook:notes.txt" not in ids and len(ids) == 13


def test_cli_strict_and_errors_are_one_line(live_server: LiveServer, tmp_path: Path) -> None:
    key = live_server.new_key("sync-errors@example.com", plan="free")
    root = mixed_folder(tmp_path / "kb")
    r = sync_cli(live_server, key, root, "--strict")
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith("error: --strict: ")
    with Client(live_server.url, key) as api:
        assert api.list_docs().total == 0

    r = sync_cli(live_server, "pa_live_" + "x" * 40, root)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].startswith(
        "error: GET /api/subscription -> 401 auth.unauthorized"
    )

    down = f"http://127.0.0.1:{free_port()}"
    r = personaizer("sync", str(root), "--api-key", key, "--url", down)
    # The retries are told as they happen; the failure itself is the one last line.
    assert r.returncode == 1 and r.stderr.count("error:") == 1
    assert re.match(rf"error: cannot reach {re.escape(down)}: \S", r.stderr.splitlines()[-1])
    assert "retrying in 0.5 s" in r.stderr

    r = personaizer("sync", str(tmp_path / "missing"), "--api-key", key, "--url", live_server.url)
    assert r.returncode == 1 and "is not a folder" in r.stderr


def test_cli_timeout_is_honest_and_a_rerun_finishes(
    live_server: LiveServer, tmp_path: Path
) -> None:
    key = live_server.new_key("sync-timeout@example.com", plan="pro")
    root = tmp_path / "slow"
    root.mkdir()
    # Some tens of chunks: seconds of embedding, far beyond the 0.1 s the first run waits.
    words = " ".join(f"word{i}" for i in range(2_500))
    (root / "long.txt").write_text(words, "utf-8")
    r = sync_cli(live_server, key, root, "--timeout", "0.1")
    assert r.returncode == 1
    last = r.stderr.splitlines()[-1]
    assert "the server may still be processing it" in last
    assert last.endswith("re-run sync: finished documents are no-ops")
    r = sync_cli(live_server, key, root)
    assert r.returncode == 0, r.stderr
    assert "created 1" in r.stdout or "unchanged 1" in r.stdout


@pytest.mark.anyio
async def test_a_terminal_gets_a_bar_over_files(app: Starlette, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from app.sync.progress import BarProgress

    key = await new_key(app, plan="pro")
    root = tmp_path / "kb"
    root.mkdir()
    for i in range(3):
        (root / f"n{i}.md").write_text(f"note {i} " * 20, "utf-8")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    async with _client(app, key) as api:
        with BarProgress(console) as bar:
            report = await sync_folder(api, root, max_chars=200, progress=bar)
    assert report.created == 3 and report.batches == 3
    final = screen.getvalue().rsplit("\r", 1)[-1]
    assert "reading" in final and "uploading" in final and final.count("3/3") == 2


def test_cli_sync_sets_and_prints_the_persona_filter(
    live_server: LiveServer, tmp_path: Path
) -> None:
    key = live_server.new_key("sync-persona@example.com", plan="pro")
    root = tmp_path / "support"
    root.mkdir()
    (root / "a.md").write_text("# Returns\nReturns take a week.", "utf-8")
    with Client(live_server.url, key) as api:
        persona = api.create_persona(name="Support")
        r = sync_cli(live_server, key, root, "--persona", persona.id)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert lines[0] == (
            f'persona {persona.id}: knowledge_filter {{"metadata":{{"source":"support"}},'
            '"external_id_prefixes":[]}'
        )
        assert lines[-1].startswith("support: created 1")
        assert api.get_persona(persona.id).knowledge_count == 1
        r = sync_cli(live_server, key, root, "--persona", "per_missing")
        assert r.returncode != 0 and "persona.not_found" in r.stderr
