"""The onnx encoder (`PERSONAIZER_ENCODER=onnx`, the default): the torch encoder's vectors and
rankings, an app serving on it through HTTP, and a cache that is reused, shared and self-repairing.

The graph is exported once per run (seconds) into a session cache; the cache tests that need
another "export" get the real exported bytes through a counting stand-in, so they check the
cache's logic without paying for the exporter again. Skipped when the `onnx` extra is absent."""

from __future__ import annotations

import functools
import hashlib
import shutil
import stat
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette

from app.embedding import onnx_export
from app.embedding.embedder import LocalModel, Model
from app.embedding.onnx_encoder import OnnxModel
from app.main import model_loader
from app.settings import Settings, usable_cores
from tests.conftest import AppFactory, client_for, new_key

for _module in ("onnxruntime", "onnx", "onnxscript"):
    pytest.importorskip(_module)

LONG = " ".join(
    f"Sentence {i} of a long report on the boundary layer of a swept wing at Mach {i % 5}."
    for i in range(80)
)  # about 1,500 tokens: truncated at 256 by both encoders

TEXTS = [
    # Cranfield-like abstracts and queries.
    "experimental investigation of the aerodynamics of a wing in a slipstream",
    "what similarity laws must be obeyed when constructing aeroelastic models of heated high "
    "speed aircraft",
    "the boundary layer in simple shear flow past a flat plate",
    "heat transfer to a blunt body in hypersonic flow with dissociation",
    "buckling of thin cylindrical shells under axial compression",
    "supersonic flutter of panels and the effect of in-plane stresses",
    "laminar separation ahead of a forward facing step",
    "an approximate solution of the compressible turbulent boundary layer",
    # Everyday text.
    "The Zephyrine desk lamp has a USB-C port and three brightness levels.",
    "Orders leave our warehouse within two business days.",
    "You can return any item within 30 days for a full refund.",
    "Felines enjoy sleeping in warm sunny spots for most of the afternoon.",
    "Magma rising through the crust erupts as lava from the mountain's vent.",
    "Preheat the oven to 200 degrees and bake the bread for forty minutes.",
    "The quarterly report shows revenue growth of 12 percent year over year.",
    "A haiku: old silent pond, a frog jumps into the pond, splash! silence again.",
    "Password resets are sent by e-mail and expire after one hour.",
    "The meeting is moved to Thursday at 3 pm in room 4.12.",
    # Unicode: accents, other scripts, emoji, symbols.
    "Héllo ÇA va? naïve café, crème brûlée à la carte",
    "Die Straßenbahn fährt über die Brücke nach Köln.",
    "日本語のテキストを正しく扱えるかどうかを確認します。",
    "这是一个关于机器学习和自然语言处理的句子。",
    "Это предложение на русском языке о погоде.",  # noqa: RUF001
    "هذه جملة باللغة العربية عن الطقس",
    "emoji only 😀🚀🔥 and a flag 🇩🇪",
    "∑ x² + ∫ f(x) dx = π ≈ 3.14159",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ and ligatures ﬁ ﬂ",  # noqa: RUF001
    "Zero\u200bwidth\u200bspaces and a soft\u00adhyphen",
    # Code, numbers, markup.
    "def encode(texts): return model.encode(texts, batch_size=32)",
    "SELECT id, title FROM docs WHERE score > 0.5 ORDER BY score DESC;",
    "<html><body><h1>Title</h1><p>Paragraph &amp; entity</p></body></html>",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
    "1234567890 3.14 -42 1e-9 0xFF 2024-01-31T12:00:00Z",
    "https://example.com/path?query=1&other=two#fragment",
    # Empty-ish.
    "",
    " ",
    "\n\t  \n",
    ".",
    "a",
    "???",
    "   leading and trailing spaces   ",
    # Long: past the 256-token limit, and long words the tokenizer splits to [UNK].
    LONG,
    "word " * 600,
    "A" * 3000,
    "supercalifragilisticexpialidocious " * 40,
    LONG[::-1],
    # Repetition and case.
    "WING WING WING WING",
    "wing",
    "Wing loading and stall speed of light aircraft",
    "the the the the the the",
]

QUERIES = [
    "boundary layer flow over a plate",
    "how do I get my money back",
    "text in Asian languages",
    "programming and databases",
    "a long repetitive document",
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def onnx_model(onnx_cache: Path) -> OnnxModel:
    """Exported from the bundled weights once for the run."""
    loaded = OnnxModel(onnx_cache)
    assert loaded.exported
    return loaded


def test_same_vectors_as_torch(model: Model, onnx_model: OnnxModel) -> None:
    assert len(TEXTS) >= 50
    expected = model.encode(TEXTS)
    got = onnx_model.encode(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(expected * got, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, (cosines.min(), TEXTS[worst][:80])
    # One at a time (no padding at all) gives the same vectors as inside a padded batch.
    for text in (TEXTS[0], "", LONG):
        single = onnx_model.encode([text])
        assert float(single[0] @ model.encode([text])[0]) >= 0.9999
    assert onnx_model.encode([]).shape == (0, 384)


def test_truncation_is_at_256_tokens_as_in_torch(onnx_model: OnnxModel) -> None:
    """Words past the limit change nothing; a text under it changes with every word."""
    tail_a, tail_b = " the end.", " a completely different ending about cooking and music."
    long_a, long_b = onnx_model.encode([LONG + tail_a, LONG + tail_b])
    assert float(long_a @ long_b) > 0.99999
    short_a, short_b = onnx_model.encode(["wing" + tail_a, "wing" + tail_b])
    assert float(short_a @ short_b) < 0.9


def test_same_top_10_as_torch(model: Model, onnx_model: OnnxModel) -> None:
    # "", " " and "\n\t  \n" are one token sequence, hence one vector: a tie either encoder
    # may break either way. Every other text is ranked.
    distinct = list(dict.fromkeys(t.strip() for t in TEXTS))

    def top10(encode: Callable[[list[str]], np.ndarray]) -> list[list[int]]:
        docs, queries = encode(distinct), encode(QUERIES)
        return [list(np.argsort(-(docs @ q), kind="stable")[:10]) for q in queries]

    assert top10(onnx_model.encode) == top10(model.encode)


def test_urgent_calls_run_on_their_own_session_with_the_same_vectors(
    onnx_cache: Path, onnx_model: OnnxModel
) -> None:
    """A query (urgent) runs on a session of its own thread count, documents on the other;
    both give the same vectors, and equal thread counts share one session."""
    model = OnnxModel(onnx_cache, threads=1, urgent_threads=2)
    assert model.session_options.intra_op_num_threads == 1
    assert model.urgent_session_options.intra_op_num_threads == 2
    texts = TEXTS[:12]
    plain = model.encode(texts)
    urgent = model.encode(texts, urgent=True)
    assert np.allclose(plain, urgent, atol=1e-5)
    assert np.allclose(plain, onnx_model.encode(texts), atol=1e-5)
    same = OnnxModel(onnx_cache, threads=2, urgent_threads=2)
    assert same.urgent_session_options is not None
    assert same._urgent is same._session


@pytest.mark.anyio
async def test_an_app_on_the_onnx_encoder_serves_put_and_search(
    make_app: AppFactory, onnx_cache: Path, onnx_model: OnnxModel, tmp_path: Path
) -> None:
    """Selected by the setting, loaded in the background by the app itself (from the run's
    cache), and reading an index the torch encoder wrote: the same ranking, the same scores."""
    corpus = [
        {"external_id": f"t{i}", "content": text}
        for i, text in enumerate(TEXTS[:20])
        if text.strip()
    ]
    torch_app = await make_app(data_dir=tmp_path / "data")
    key = await new_key(torch_app, plan="unlimited")
    async with client_for(torch_app, **{"X-Api-Key": key}) as api:
        r = await api.put("/api/knowledge/docs", json={"items": corpus[:10]})
        assert r.status_code == 200, r.text
        before = await _search(api, "heat transfer in hypersonic flow")

    onnx_app: Starlette = await make_app(
        data_dir=tmp_path / "data",
        app_model=None,
        encoder="onnx",
        encoder_cache_dir=onnx_cache,
        encoder_threads=2,
        encoder_query_threads=1,
    )
    embedder = onnx_app.state.runtime.embedder
    await embedder.wait_ready()
    assert isinstance(embedder.model, OnnxModel), embedder.load_error
    assert not embedder.model.exported  # the run's cache was reused
    assert embedder.model.session_options.intra_op_num_threads == 2
    assert embedder.model.urgent_session_options.intra_op_num_threads == 1
    async with client_for(onnx_app, **{"X-Api-Key": key}) as api:
        assert (await api.get("/healthz")).status_code == 200
        after = await _search(api, "heat transfer in hypersonic flow")
        assert [h["external_id"] for h in after] == [h["external_id"] for h in before]
        for old, new in zip(before, after, strict=True):
            assert new["semantic_score"] == pytest.approx(old["semantic_score"], abs=1e-4)

        r = await api.put("/api/knowledge/docs", json={"items": corpus[10:]})
        assert r.status_code == 200, r.text
        assert r.json()["summary"]["created"] == len(corpus[10:])
        hits = await _search(api, "where do cats like to nap")
        assert hits[0]["external_id"] == "t11"  # "Felines enjoy sleeping ...", embedded by onnx
        assert embedder.stats.texts > 0


async def _search(api: object, query: str) -> list[dict[str, object]]:
    r = await api.post(  # type: ignore[attr-defined]
        "/api/knowledge/search", json={"query": query, "mode": "semantic", "k": 5}
    )
    assert r.status_code == 200, r.text
    hits: list[dict[str, object]] = r.json()["results"]
    assert hits
    return hits


# --- the default ----------------------------------------------------------------------------


def test_onnx_is_the_default_with_one_cache_for_every_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, the encoder is onnx and its export lives in the user's cache directory, shared
    by every data dir (a new data dir must not export again); made private if missing."""
    monkeypatch.delenv("PERSONAIZER_ENCODER", raising=False)
    monkeypatch.delenv("PERSONAIZER_ENCODER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    one = Settings(data_dir=tmp_path / "one")
    two = Settings(data_dir=tmp_path / "two")
    assert one.encoder == "onnx"
    assert one.encoder_cache_path == two.encoder_cache_path == tmp_path / "xdg" / "personaizer"
    assert one.encoder_cache_path.is_dir()
    assert stat.S_IMODE(one.encoder_cache_path.stat().st_mode) == 0o700
    loader = model_loader(one)
    assert isinstance(loader, functools.partial) and loader.func is OnnxModel
    assert loader.args == (tmp_path / "xdg" / "personaizer",)
    # One session for queries and documents alike, on every core (a second one, for documents
    # alone, holds another copy of the weights: PERSONAIZER_ENCODER_THREADS asks for it).
    cores = usable_cores()
    assert loader.keywords == {"model_dir": None, "threads": cores, "urgent_threads": cores}
    assert model_loader(Settings(data_dir=tmp_path, encoder_threads=1)).keywords == {
        "model_dir": None,
        "threads": 1,
        "urgent_threads": cores,
    }

    # An explicit directory wins; torch is still one setting away.
    chosen = Settings(data_dir=tmp_path / "one", encoder_cache_dir=tmp_path / "mine")
    assert chosen.encoder_cache_path == tmp_path / "mine"
    assert model_loader(Settings(data_dir=tmp_path, encoder="torch")) is LocalModel


def test_without_a_writable_user_cache_the_data_dir_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container user without a home (here: the cache "directory" is a file) still starts:
    the export is cached under the data dir instead."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")
    monkeypatch.delenv("PERSONAIZER_ENCODER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.encoder_cache_path == tmp_path / "data" / "cache"


# --- the cache ------------------------------------------------------------------------------


class CountingExport:
    """Stands in for the exporter: counts calls and returns the run's real exported bytes."""

    def __init__(self, cache: Path, wait: threading.Event | None = None) -> None:
        (self.source,) = onnx_export.cached_files(cache)
        self.calls = 0
        self.wait = wait
        self.entered = threading.Event()

    def __call__(self, model_dir: Path) -> bytes:
        self.calls += 1
        self.entered.set()
        if self.wait is not None:
            self.wait.wait(timeout=30)
        return self.source.read_bytes()


def _refuse_export(model_dir: Path) -> bytes:
    raise AssertionError("exported although a valid cache file was there")


def test_a_second_load_reuses_the_cache(
    onnx_model: OnnxModel, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "export_onnx", _refuse_export)
    (cached,) = onnx_export.cached_files(onnx_cache)
    again = OnnxModel(onnx_cache)
    assert not again.exported
    assert onnx_export.cached_files(onnx_cache) == [cached]
    np.testing.assert_array_equal(again.encode(TEXTS[:5]), onnx_model.encode(TEXTS[:5]))


def test_a_loaded_model_keeps_no_copy_of_the_graph(onnx_model: OnnxModel, onnx_cache: Path) -> None:
    """The runtime reads the file just checked by its digest itself: once loaded, nothing of the
    graph (87 MB) stays on Python's heap. A session made from the bytes would keep them for as
    long as it lives (onnxruntime's wrapper holds them to re-create itself)."""
    (cached,) = onnx_export.cached_files(onnx_cache)
    size = cached.stat().st_size
    tracemalloc.start()
    try:
        loaded = OnnxModel(onnx_cache)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not loaded.exported and loaded.path == cached
    assert peak >= size  # the digest check read the whole file on Python's heap
    assert held < size / 10, f"{held / 2**20:.1f} MB still held after loading"
    np.testing.assert_array_equal(loaded.encode(TEXTS[:3]), onnx_model.encode(TEXTS[:3]))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not-a-model"])
def test_a_corrupt_cache_file_is_replaced(
    damage: str,
    onnx_model: OnnxModel,
    onnx_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    export = CountingExport(onnx_cache)
    monkeypatch.setattr(onnx_export, "export_onnx", export)
    cache = tmp_path / "cache"
    cache.mkdir()
    good = export.source.read_bytes()
    prefix = onnx_export._prefix()
    if damage == "not-a-model":
        # Its digest matches, but the runtime refuses it (a broken build's export).
        junk = b"\x08\x07" * 1000
        broken = cache / f"{prefix}{hashlib.sha256(junk).hexdigest()[:16]}.onnx"
    else:
        junk = {
            "truncated": good[: len(good) // 2],
            "empty": b"",
            "garbage": b"\x08\x07" * 1000,
        }[damage]
        broken = cache / export.source.name
    broken.write_bytes(junk)
    # A temporary file left by an exporter that died is cleared away too.
    (cache / f".{prefix}x.tmp").write_bytes(good[:100])

    loaded = OnnxModel(cache)
    assert loaded.exported and export.calls == 1
    assert onnx_export.cached_files(cache) == [cache / export.source.name]
    assert (cache / export.source.name).read_bytes() == good
    assert not list(cache.glob("*.tmp"))
    np.testing.assert_array_equal(loaded.encode(TEXTS[:5]), onnx_model.encode(TEXTS[:5]))
    assert not OnnxModel(cache).exported


def test_concurrent_loads_export_once(
    onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loads at once (as `serve --workers 2` starts): one exports, the other waits for the
    lock and reads the file; neither reads a half-written one."""
    release = threading.Event()
    export = CountingExport(onnx_cache, wait=release)
    monkeypatch.setattr(onnx_export, "export_onnx", export)
    cache = tmp_path / "cache"
    loaded: list[OnnxModel] = []
    threads = [threading.Thread(target=lambda: loaded.append(OnnxModel(cache))) for _ in range(2)]
    for thread in threads:
        thread.start()
    # One holds the lock and exports; give the other time to queue behind it (if it is slower,
    # it finds the file instead: one export either way).
    assert export.entered.wait(timeout=60)
    time.sleep(0.5)
    release.set()
    for thread in threads:
        thread.join(timeout=60)
    assert len(loaded) == 2
    assert export.calls == 1
    assert sorted(m.exported for m in loaded) == [False, True]
    assert len(onnx_export.cached_files(cache)) == 1


def test_an_unwritable_cache_exports_in_memory(
    onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = CountingExport(onnx_cache)
    monkeypatch.setattr(onnx_export, "export_onnx", export)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    loaded = OnnxModel(blocker / "cache")
    assert loaded.exported and export.calls == 1
    assert loaded.encode(["still works"]).shape == (1, 384)


def test_a_cache_for_other_weights_is_not_used(
    onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file name carries the weights' hash: a file for other weights (or an older export
    version) is ignored, whatever it holds."""
    export = CountingExport(onnx_cache)
    monkeypatch.setattr(onnx_export, "export_onnx", export)
    cache = tmp_path / "cache"
    cache.mkdir()
    prefix = onnx_export._prefix()
    foreign = cache / export.source.name.replace(prefix, f"{onnx_export.STEM}-0123456789abcdef-")
    shutil.copyfile(export.source, foreign)
    loaded = OnnxModel(cache)
    assert loaded.exported and export.calls == 1
    assert foreign.exists()


# --- a model directory (the torch-free runtime) -------------------------------------------


def test_a_model_directory_runs_without_exporting_and_refuses_damage(
    onnx_model: OnnxModel, onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made ahead of time, it is read (never exported into, never the cache) and gives the
    cache's vectors; a changed byte of the graph is refused in one line, not re-exported."""
    monkeypatch.setattr(onnx_export, "export_onnx", CountingExport(onnx_cache))
    made = onnx_export.write_model_dir(tmp_path / "model")
    monkeypatch.setattr(onnx_export, "export_onnx", _refuse_export)
    loaded = OnnxModel(tmp_path / "no-cache", model_dir=made)
    assert loaded.source == "bundled" and not loaded.exported
    assert not (tmp_path / "no-cache").exists()
    assert np.allclose(loaded.encode(TEXTS[:8]), onnx_model.encode(TEXTS[:8]), atol=1e-6)
    graph = made / onnx_export.GRAPH
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(onnx_export.ModelDirError, match="damaged"):
        OnnxModel(tmp_path / "no-cache", model_dir=made)
