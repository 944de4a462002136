"""A real folder synced by the real CLI into a real server, with every case of issue 23's points
1, 2 and 4 at once: titles from the documents' structure, `.gz` and extension-less text read,
build and licence files skipped, `--exclude` and `.personaizerignore`, and `--persona`, whose
knowledge then holds the synced documents for search; then a re-sync that sends nothing and one
that sends the single changed file."""

from __future__ import annotations

import gzip
from pathlib import Path

from app.client import Client
from tests.support.live import LiveServer, personaizer

#: A `# comment` in a fenced block came before the real heading: the title was the comment.
GUIDE = """\
Set it up as below.

```sh
# Config will be read from environment variables and/or ".env" files.
export LAMP_LEVEL=3
```

# Installing the Aurora lamp

Screw the base to the wall and plug the lamp into any USB-C charger.
"""
POLICY = """\
---
layout: page
title: "Returns: the policy"
---

# Not the title

Return any lamp within 30 days for a full refund.
"""
NOTES = "# Warranty notes\n\nThe warranty on every lamp lasts five years.\n"
DEBIAN = "Debian packaging notes\n\nThe package installs the lamp daemon as a system service.\n"
MANUAL = "Lamp manual\n===========\n\nThe dimmer has three brightness levels.\n"


def _folder(root: Path) -> Path:
    root.mkdir()
    (root / "guide.md").write_text(GUIDE, "utf-8")
    (root / "policy.md").write_text(POLICY, "utf-8")
    (root / "notes.md.gz").write_bytes(gzip.compress(NOTES.encode()))
    (root / "README.Debian").write_text(DEBIAN, "utf-8")
    (root / "manual.rst").write_text(MANUAL, "utf-8")
    (root / "Makefile").write_text("all:\n\tsphinx-build . _build\n", "utf-8")
    (root / "LICENSE").write_text("Permission is hereby granted, free of charge.\n", "utf-8")
    (root / "drafts").mkdir()
    (root / "drafts" / "wip.md").write_text("# Unfinished\n\nNot ready.\n", "utf-8")
    (root / "debug.log").write_text("lamp daemon started\n", "utf-8")
    (root / "kept.log").write_text("The lamp firmware changelog: version 2 adds dimming.\n")
    (root / ".personaizerignore").write_text("# logs are noise\n*.log\n!kept.log\n", "utf-8")
    return root


def test_a_real_folder_synced_into_a_persona(live_server: LiveServer, tmp_path: Path) -> None:
    key = live_server.new_key("sync-folder@example.com", plan="pro")
    root = _folder(tmp_path / "handbook")
    with Client(live_server.url, key) as api:
        persona = api.create_persona(name="Lamp support", instructions="Answer about lamps.")
        # Not synced: outside the persona's knowledge, however well it matches.
        api.upsert_doc("outside", content="The warranty on every lamp lasts ten years.")

        def sync(*args: str) -> tuple[str, str]:
            r = personaizer(
                "sync", str(root), "--api-key", key, "--url", live_server.url, *args, timeout=300
            )
            assert r.returncode == 0, r.stderr
            return r.stdout, r.stderr

        out, err = sync("--persona", persona.id, "--exclude", "drafts/")
        lines = out.strip().splitlines()
        assert lines[0] == (
            f'persona {persona.id}: knowledge_filter {{"metadata":{{"source":"handbook"}},'
            '"external_id_prefixes":[]}'
        )
        assert lines[-1].startswith(
            "handbook: created 6, updated 0, unchanged 0, deleted 0, skipped 4 ("
        )
        # Skipped files, grouped by reason, each with its files.
        assert "skipped 4 files:" in err
        assert "  build or licence file (2 files): LICENSE, Makefile" in err
        assert "  excluded by --exclude drafts/ (1 file): drafts/" in err
        assert "  excluded by .personaizerignore (1 file): debug.log" in err

        docs = {d.metadata["path"]: d for d in api.iter_docs(metadata={"source": "handbook"})}
        assert {path: d.title for path, d in docs.items()} == {
            "guide.md": "Installing the Aurora lamp",
            "policy.md": "Returns: the policy",
            "notes.md.gz": "Warranty notes",
            # No structure to take a title from: the file's name without its last suffix.
            "README.Debian": "README.Debian",
            "manual.rst": "Lamp manual",
            "kept.log": "kept.log",
        }
        assert api.get_doc(docs["notes.md.gz"].external_id).content == NOTES

        # The persona's knowledge is the synced source, by its filter, and nothing else.
        knowledge = list(api.iter_persona_knowledge(persona.id))
        assert sorted(d.external_id for d in knowledge) == sorted(
            d.external_id for d in docs.values()
        )
        assert {d.via for d in knowledge} == {"filter"}
        hits = api.search("how long is the lamp warranty", k=10, persona_id=persona.id).results
        assert hits[0].external_id == docs["notes.md.gz"].external_id
        assert hits[0].title == "Warranty notes"
        assert "outside" not in {h.external_id for h in hits}
        assert "outside" in {h.external_id for h in api.search("lamp warranty", k=10).results}
        daemon = api.search("system service daemon", k=1, persona_id=persona.id).results
        assert daemon[0].external_id == docs["README.Debian"].external_id

        # Nothing changed: nothing is sent.
        out, err = sync("--persona", persona.id, "--exclude", "drafts/")
        assert "handbook: created 0, updated 0, unchanged 6, deleted 0, skipped 4 (0 requests," in (
            out
        )
        assert "6 unchanged, nothing to upload" in err and "uploading" not in err

        # One file changed: it alone is sent, and named; search sees the new text at once.
        (root / "manual.rst").write_text(
            MANUAL + "\nA fourth level, night light, came with firmware 3.\n", "utf-8"
        )
        out, err = sync("--persona", persona.id, "--exclude", "drafts/")
        assert "handbook: created 0, updated 1, unchanged 5, deleted 0, skipped 4 (1 request," in (
            out
        )
        assert "uploading 1 document (" in err and "; 5 unchanged" in err
        assert f"updated {docs['manual.rst'].external_id}" in err
        night = api.search("night light", k=1, persona_id=persona.id, mode="keyword").results
        assert night[0].external_id == docs["manual.rst"].external_id
