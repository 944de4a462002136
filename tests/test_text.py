"""Counts in what the CLI prints: "1 key", never "1 keys"."""

from __future__ import annotations

from app.text import plural


def test_one_is_singular_and_every_other_count_plural() -> None:
    assert plural(1, "key") == "1 key"
    assert plural(0, "key") == "0 keys"
    assert plural(2, "document") == "2 documents"
    assert plural(1_204, "character") == "1,204 characters"
    assert plural(3, "batch", "batches") == "3 batches"
