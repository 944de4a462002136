"""The onnx encoder's graph: exported once from the bundled weights, cached on disk.

Nothing is downloaded: torch (a core dependency) loads the bundled all-MiniLM-L6-v2 and its
exporter (with `onnx` and `onnxscript`, the `onnx` extra) writes the transformer, mean pooling
and L2 normalisation as one graph. That takes seconds, so the result is cached as
`<cache dir>/all-MiniLM-L6-v2-<source key>-<digest>.onnx`:

- the source key hashes the weights file and `EXPORT_VERSION`, so new weights or a changed
  graph are exported anew and an old file is never used for them;
- the digest is the file's own sha256 prefix, checked on every load: a truncated or corrupt
  file (a full disk, a copy cut short) is removed and exported again, never fatal;
- the file is written under a temporary name and renamed into place, so no process ever reads
  half of it; an exclusive lock keeps concurrent starts (`serve --workers N`) from exporting N
  times: the others wait, then read the one file.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.embedding.chunking import model_path
from app.files import private_dir

log = logging.getLogger(__name__)

#: Bump whenever the exported graph changes (the wrapper, opset, export options): a cache
#: written by an older version is then exported anew instead of being reused.
EXPORT_VERSION = 1
OPSET = 20
#: sentence-transformers' `max_seq_length` for this model (sentence_bert_config.json).
MAX_SEQ_LENGTH = 256
STEM = "all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Not "embedding": the exporter names a node after BERT's embedding module, and an output of
#: the same name makes a graph ONNX Runtime refuses.
OUTPUT = "sentence_embedding"


def load_or_export(cache_dir: Path) -> tuple[bytes, bool]:
    """The serialized ONNX model for the bundled weights, and whether it was exported now.

    A valid cached file is read; otherwise the graph is exported (under a lock, so that one
    process exports while others wait for its file) and written atomically. A cache that cannot
    be written (a read-only volume) costs an export per start, not the start itself."""
    prefix = _prefix()
    with contextlib.suppress(OSError):
        found = _read_valid(cache_dir, prefix)
        if found is not None:
            return found, False
    with contextlib.ExitStack() as held:
        try:
            private_dir(cache_dir)
            held.enter_context(_exclusive(cache_dir / f".{prefix}lock"))
        except OSError as exc:
            log.warning("ONNX cache %s is not writable (%s); exporting in memory", cache_dir, exc)
            return export_onnx(model_path()), True
        # Another process may have written it while this one waited for the lock.
        found = _read_valid(cache_dir, prefix)
        if found is not None:
            return found, False
        _remove_stale_temporaries(cache_dir, prefix)
        log.info("exporting the embedding model to ONNX (once; cached in %s)", cache_dir)
        data = export_onnx(model_path())
        try:
            _write_atomic(cache_dir, prefix, data)
        except OSError as exc:
            log.warning("could not cache the ONNX model in %s: %s", cache_dir, exc)
        return data, True


def cached_files(cache_dir: Path) -> list[Path]:
    """The cached models for the bundled weights (normally one)."""
    return sorted(cache_dir.glob(f"{_prefix()}*.onnx"))


def remove_cached(cache_dir: Path) -> None:
    for path in cached_files(cache_dir):
        path.unlink(missing_ok=True)


def source_key(weights: Path) -> str:
    """16 hex digits naming the weights file's content and the export version."""
    digest = hashlib.sha256(f"export-v{EXPORT_VERSION}\n".encode())
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@functools.cache
def _prefix() -> str:
    return f"{STEM}-{source_key(model_path() / 'model.safetensors')}-"


def _read_valid(cache_dir: Path, prefix: str) -> bytes | None:
    """The first cached file whose content matches the digest in its name; any other is
    removed (a partial or corrupt file is replaced, never trusted)."""
    for path in sorted(cache_dir.glob(f"{prefix}*.onnx")):
        expected = path.name[len(prefix) : -len(".onnx")]
        data = path.read_bytes()
        if expected and hashlib.sha256(data).hexdigest().startswith(expected):
            return data
        log.warning("removing the corrupt ONNX cache file %s", path)
        path.unlink(missing_ok=True)
    return None


def _write_atomic(cache_dir: Path, prefix: str, data: bytes) -> Path:
    final = cache_dir / f"{prefix}{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{prefix}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename survives a crash only once the directory is synced.
    dir_fd = os.open(cache_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def _remove_stale_temporaries(cache_dir: Path, prefix: str) -> None:
    """Temporary files of an exporter that died: only the lock holder writes them, so while it
    is held any that exist are stale."""
    for path in cache_dir.glob(f".{prefix}*.tmp"):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def export_onnx(model_dir: Path) -> bytes:
    """The transformer with mean pooling and L2 normalisation as one serialized ONNX graph.

    Eager attention, not SDPA: its graph is plain MatMul/Softmax (a quarter fewer nodes) with
    no mask-dependent branch for the exporter to specialise on. The example batch has padding,
    so the masked path is the one traced."""
    import torch
    from transformers import AutoModel

    with _quiet():
        transformer: Any = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    transformer.eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            tokens = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            # sentence-transformers' Pooling (mean) and Normalize modules, op for op.
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2, dim=1)

    ids = torch.full((2, 8), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    types = torch.zeros_like(ids)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=MAX_SEQ_LENGTH)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            SentenceEncoder(transformer).eval(),
            (ids, mask, types),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUTS),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None
    data: bytes = program.model_proto.SerializeToString()
    return data


#: Loggers that narrate an export step by step (hundreds of INFO lines, torchvision notes).
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "transformers")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines, warnings and progress bars are no concern of the
    operator's: one log line says an export happens, and a failure is raised."""
    hf_logging: Any = importlib.import_module("transformers.utils.logging")
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            hf_logging.disable_progress_bar()
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()
