"""Words for counts, shared by the CLI and sync: "1 key", "2 keys", never "1 keys"."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """`count` and `word`, the word in the plural unless `count` is one (`many`, when adding an
    s is wrong: plural(2, "batch", "batches")). Counts get thousands separators."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"
