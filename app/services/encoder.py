"""The embedding model as the operator sees it: which encoder runs, where its model comes from,
and the checks made before a server listens (`personaizer --version`, `personaizer serve`).

A server whose model cannot load would listen and answer 503 forever; these checks turn the
causes an operator can fix (a damaged or mismatched model directory, a missing package) into one
line on stderr and a non-zero exit instead.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from app.embedding import onnx_export
from app.embedding.chunking import model_path
from app.embedding.onnx_encoder import EncoderUnavailable, check_available
from app.services.operations import OperationError
from app.settings import Settings

#: What the torch encoder imports (a one-file build and the Docker image have neither).
TORCH_MODULES = ("torch", "sentence_transformers")


@dataclass(frozen=True, slots=True)
class EncoderInfo:
    encoder: str
    #: "bundled" (a model directory made ahead of time), "cache", "exported now" (onnx), or
    #: "package" (torch: the weights' own package).
    source: str
    path: Path | None

    def line(self) -> str:
        where = f" ({self.path})" if self.path is not None else ""
        return f"encoder: {self.encoder}, model: {self.source}{where}"


def check(settings: Settings) -> None:
    """Raise `OperationError` (one line) when the configured encoder cannot load: its packages
    are missing, or its model directory is damaged. Cheap enough for every start: reads and
    hashes the model directory's graph once (~0.1 s), imports nothing heavy."""
    if settings.encoder == "torch":
        _check_torch()
        return
    model_dir = onnx_export.resolve_model_dir(settings.encoder_model_dir)
    try:
        if model_dir is not None:
            check_available(export=False)
            onnx_export.read_model_dir(model_dir)
        else:
            check_available(export=not onnx_export.cached_files(settings.encoder_cache_path))
    except (EncoderUnavailable, onnx_export.ModelDirError) as exc:
        raise OperationError(str(exc)) from exc


def describe(settings: Settings) -> EncoderInfo:
    """The encoder and where its model comes from, resolved as a server start resolves it: an
    onnx graph is read (and exported into the cache when there is none, as the first start
    would)."""
    check(settings)
    if settings.encoder == "torch":
        return EncoderInfo("torch (sentence-transformers)", "package", model_path())
    model_dir = onnx_export.resolve_model_dir(settings.encoder_model_dir)
    try:
        graph = onnx_export.load_graph(settings.encoder_cache_path, model_dir)
    except onnx_export.ModelDirError as exc:
        raise OperationError(str(exc)) from exc
    return EncoderInfo("onnx (ONNX Runtime)", graph.source, graph.path)


def _check_torch() -> None:
    missing = [name for name in TORCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise OperationError(
            f"PERSONAIZER_ENCODER=torch needs {', '.join(missing)}, which this installation "
            "does not have (the one-file build and the Docker image run onnx only)"
        )
