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

A model directory (`write_model_dir`, `python -m app.embedding.onnx_export DIR`) is the same
graph made ahead of time, for a runtime without torch (the one-file binary, the Docker image):
the graph, the tokenizer and a manifest naming the graph's sha256. It is read by
`read_model_dir`, which checks the manifest and the digest and never exports: a damaged or
mismatched directory is an error (`ModelDirError`), since where it is used there is nothing to
export with.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.embedding.chunking import bundled_model_dir, model_path, tokenizer_file
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
#: A model directory's manifest, graph and tokenizer file names.
MANIFEST = "personaizer-model.json"
GRAPH = "model.onnx"
TOKENIZER = "tokenizer.json"
#: The modules an export imports (none of them is needed to run an exported graph).
EXPORT_MODULES = ("torch", "transformers", "onnx", "onnxscript")

#: Where a loaded graph came from: a model directory made ahead of time, the cache, or an
#: export by this very load.
Source = Literal["bundled", "cache", "exported now"]


@dataclass(frozen=True, slots=True)
class LoadedGraph:
    data: bytes
    source: Source
    #: The file read (the model directory's graph, or the cache file; None: exported in memory).
    path: Path | None


class ModelDirError(RuntimeError):
    """A model directory cannot be used: missing, damaged or made for another graph. The
    message is one line for the operator."""


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


def load_graph(cache_dir: Path, model_dir: Path | None) -> LoadedGraph:
    """The graph from `model_dir` when given (checked, never exported), else from the cache
    (exported into it when missing)."""
    if model_dir is not None:
        return LoadedGraph(read_model_dir(model_dir), "bundled", model_dir / GRAPH)
    data, exported = load_or_export(cache_dir)
    if exported:
        return LoadedGraph(data, "exported now", _cached_path(cache_dir, data))
    return LoadedGraph(data, "cache", _cached_path(cache_dir, data))


def _cached_path(cache_dir: Path, data: bytes) -> Path | None:
    path = cache_dir / f"{_prefix()}{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    return path if path.exists() else None


def resolve_model_dir(configured: Path | None) -> Path | None:
    """The model directory to run from: the configured one (`PERSONAIZER_ENCODER_MODEL_DIR`),
    else a one-file build's own; None: the cache (and an export when it is empty)."""
    return configured if configured is not None else bundled_model_dir()


def read_model_dir(model_dir: Path) -> bytes:
    """The graph of a model directory, after checking that it is whole and made for this
    version's graph (`EXPORT_VERSION`). Raises `ModelDirError`."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelDirError(f"no exported model in {model_dir} ({MANIFEST} is missing)") from exc
    except (OSError, ValueError) as exc:
        raise ModelDirError(
            f"the model manifest {model_dir / MANIFEST} is unreadable: {exc}"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("export_version") != EXPORT_VERSION:
        found = manifest.get("export_version") if isinstance(manifest, dict) else None
        raise ModelDirError(
            f"the model in {model_dir} was exported for graph version {found}, this build "
            f"runs version {EXPORT_VERSION}: export it again (python -m app.embedding.onnx_export)"
        )
    if not (model_dir / TOKENIZER).is_file():
        raise ModelDirError(f"the model in {model_dir} is damaged: {TOKENIZER} is missing")
    try:
        data = (model_dir / GRAPH).read_bytes()
    except OSError as exc:
        raise ModelDirError(
            f"the model in {model_dir} is damaged: {GRAPH}: {exc.strerror or exc}"
        ) from exc
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise ModelDirError(
            f"the model in {model_dir} is damaged: {GRAPH} does not match its recorded sha256"
        )
    return data


def write_model_dir(target: Path) -> Path:
    """Export the graph into `target` with the tokenizer and the manifest (what a torch-free
    runtime loads with `read_model_dir`). The manifest is written last: a directory cut short
    has none, and is refused rather than half-read."""
    target.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)
    weights = model_path() / "model.safetensors"
    data = export_onnx(model_path())
    (target / GRAPH).write_bytes(data)
    shutil.copyfile(tokenizer_file(), target / TOKENIZER)
    manifest = {
        "model": STEM,
        "export_version": EXPORT_VERSION,
        "opset": OPSET,
        "source_key": source_key(weights),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    read_model_dir(target)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m app.embedding.onnx_export DIR`: write a model directory (build time)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        sys.exit("usage: python -m app.embedding.onnx_export TARGET_DIR")
    target = write_model_dir(Path(args[0]))
    print(f"exported {STEM} to {target} ({(target / GRAPH).stat().st_size / 1e6:.1f} MB)")


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


if __name__ == "__main__":
    main()
