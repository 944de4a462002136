"""The pure parts of scripts/eval_cranfield.py: parsing and scoring, checked by hand-worked cases."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "eval_cranfield.py"


def _load() -> ModuleType:
    # The script imports its sibling scripts/local_server.py, as `python scripts/...` would.
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("eval_cranfield", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class bodies run.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ev = _load()


def test_gain_for_grade() -> None:
    assert [ev.gain_for_grade(g) for g in (1, 2, 3, 4, 5, -1, 0)] == [4, 3, 2, 1, 0, 0, 0]


def test_ndcg_of_the_ideal_ranking_is_one() -> None:
    gains = {1: 4, 2: 2, 3: 1, 9: 0}
    assert ev.ndcg_at_k([1, 2, 3], gains, 10) == pytest.approx(1.0)
    assert ev.ndcg_at_k([1, 2, 3, 9, None], gains, 10) == pytest.approx(1.0)


def test_ndcg_worked_example() -> None:
    gains = {1: 4, 2: 2, 3: 1}
    # Ranking: non-relevant, doc 3, doc 1. DCG = 1/log2(3) + 4/log2(4) = 0.6309 + 2.
    dcg = 1 / math.log2(3) + 4 / 2
    idcg = 4 + 2 / math.log2(3) + 1 / 2
    assert ev.ndcg_at_k([7, 3, 1], gains, 10) == pytest.approx(dcg / idcg)
    # The ideal DCG counts relevant documents the ranking never returned; k cuts both.
    assert ev.ndcg_at_k([1], gains, 1) == pytest.approx(1.0)
    assert ev.ndcg_at_k([2, 1], gains, 1) == pytest.approx(2 / 4)


def test_ndcg_counts_a_document_once_and_none_as_a_miss() -> None:
    gains = {1: 4, 2: 2}
    assert ev.ndcg_at_k([1, 1, 2], gains, 10) == pytest.approx(1.0)
    assert ev.ndcg_at_k([None, 1, 2], gains, 10) < 1.0
    assert ev.ndcg_at_k([], gains, 10) == 0.0
    assert ev.ndcg_at_k([1, 2], {}, 10) == 0.0
    assert ev.ndcg_at_k([1, 2], {1: 0}, 10) == 0.0
    with pytest.raises(ValueError):
        ev.ndcg_at_k([1], gains, 0)


def test_recall_at_k() -> None:
    gains = {1: 4, 2: 1, 3: 0, 4: 2}
    assert ev.recall_at_k([1, 3, 5], gains, 50) == pytest.approx(1 / 3)
    assert ev.recall_at_k([5, 1, 2, 4], gains, 3) == pytest.approx(2 / 3)
    assert ev.recall_at_k([None, 1, 1], gains, 3) == pytest.approx(1 / 3)
    assert ev.recall_at_k([1], {}, 10) == 0.0


def test_percentile_interpolates() -> None:
    assert ev.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert ev.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert ev.percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert ev.percentile([5.0], 95) == 5.0
    assert ev.percentile([1.0, 9.0], 0) == 1.0 and ev.percentile([1.0, 9.0], 100) == 9.0
    assert math.isnan(ev.percentile([], 50))


CRAN_DOCS = """.I 1
.T
experimental investigation of the
aerodynamics of a wing .
.A
brenckmann,m.
.B
j. ae. scs. 25, 1958, 324.
.W
experimental investigation of the aerodynamics of a
wing in a slipstream .
.I 2
.T
blank one
.W
.I 3
.W
text only
"""

CRAN_QUERIES = """.I 001
.W
what similarity laws must be obeyed .
.I 002
.W
what are the structural problems
.I 004
.W
can a criterion be developed
"""


def test_parse_documents() -> None:
    docs = ev.parse_documents(CRAN_DOCS)
    assert sorted(docs) == [1, 2, 3]
    assert docs[1].title == "experimental investigation of the aerodynamics of a wing ."
    assert (
        docs[1].text == "experimental investigation of the aerodynamics of a wing in a slipstream ."
    )
    assert docs[1].authors == "brenckmann,m."
    assert docs[2].text == "" and docs[3].title == ""
    assert [d.doc_id for d in ev.uploadable_documents(docs)] == [1, 3]


def test_parse_queries_numbers_by_position() -> None:
    queries = ev.parse_queries(CRAN_QUERIES)
    assert [(q.number, q.file_id) for q in queries] == [(1, 1), (2, 2), (3, 4)]
    assert queries[2].text == "can a criterion be developed"


def test_parse_qrels_keeps_the_higher_gain() -> None:
    qrels = ev.parse_qrels("1 184 2\n1 29 -1\n\n1 184 1\n3 5 4\n")
    assert qrels == {1: {184: 4, 29: 0}, 3: {5: 1}}
    with pytest.raises(ValueError):
        ev.parse_qrels("1 2\n")


def test_external_ids_round_trip() -> None:
    assert ev.external_id_for(42) == "cran-42"
    assert ev.doc_id_from_external_id("cran-42") == 42
    assert ev.doc_id_from_external_id("other-42") is None
    assert ev.doc_id_from_external_id("cran-x") is None
