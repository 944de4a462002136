"""The upsert planner on its own, no database: each item's status against the stored document,
what is embedded and what is kept, and which chunk rows a batch deletes or retitles.

The stored side is built the way the write builds it: a first plan's chunks and hashes, each
chunk given an id and a vector of its own, so a kept vector is recognisable by identity."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.models import Chunk, KnowledgeDoc, KnowledgeDocItem
from app.models.json_equality import json_equal
from app.models.knowledge import EMBEDDING_DIMS
from app.services import upsert_plan
from app.services.upsert_plan import Existing, ItemPlan, Texts

PARAGRAPHS = [
    "Jet engines draw in air, compress it, burn fuel in it and push the hot gas out the back.",
    "Sourdough bread rises with a starter of wild yeast and bacteria kept alive with flour.",
    "A chess knight moves two squares in one direction and then one square to the side.",
]
WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def long_text(n: int) -> str:
    """Enough text for several chunks, each chunk different."""
    return " ".join(f"Part {i}: {PARAGRAPHS[i % 3]}" for i in range(n))


def doc(external_id: str, content: str, **fields: object) -> KnowledgeDocItem:
    return KnowledgeDocItem.model_validate(
        {"external_id": external_id, "content": content, **fields}
    )


def stored(items: Sequence[KnowledgeDocItem], *, first_chunk_id: int = 1) -> dict[str, Existing]:
    """The documents as a first upsert of `items` leaves them, with all their chunks."""
    out: dict[str, Existing] = {}
    chunk_id = first_chunk_id
    for p in upsert_plan.decide(Texts(items), {}):
        assert p.chunks is not None
        row = KnowledgeDoc(
            id=f"doc-{p.item.external_id}",
            user_id=1,
            external_id=p.item.external_id,
            title=p.item.title,
            content=p.item.content,
            metadata_=p.item.metadata,
            content_sha256=p.content_sha,
            char_count=len(p.item.content),
            chunk_count=len(p.chunks),
            created_at=WHEN,
            updated_at=WHEN,
        )
        chunks = []
        for c, sha in zip(p.chunks, p.embed_shas, strict=True):
            chunks.append(
                Chunk(
                    id=chunk_id,
                    doc_id=row.id,
                    user_id=1,
                    chunk_index=c.index,
                    text=c.text,
                    embed_sha256=sha,
                    embedding=np.full(EMBEDDING_DIMS, chunk_id, dtype=np.float32),
                )
            )
            chunk_id += 1
        out[row.external_id] = Existing(row, chunks)
    return out


def statuses(plans: Sequence[ItemPlan]) -> list[str]:
    return [p.status for p in plans]


def test_new_documents_are_created_and_embed_every_chunk() -> None:
    items = [doc("a", long_text(40), title="A"), doc("b", "One short note.")]
    plans = upsert_plan.decide(Texts(items), {})
    assert statuses(plans) == ["created", "created"]
    a, b = plans
    assert a.chunks is not None and len(a.chunks) >= 2
    assert b.chunks is not None and len(b.chunks) == 1
    # The title is folded into what each chunk embeds, not into the chunk's text.
    assert all(t.startswith("A\n") for t in a.embed_texts)
    assert not any(c.text.startswith("A\n") for c in a.chunks)

    need = upsert_plan.needed(plans, set())
    assert set(need) == {*a.embed_shas, *b.embed_shas}
    assert upsert_plan.needed(plans, set(need)) == {}  # what is already embedded is not again

    changes = upsert_plan.changes(plans)
    assert changes.writes == changes.rewritten == plans
    assert changes.replaced == [] and changes.retitled == []
    assert changes.old_chunk_ids == [] and changes.reused == {}
    assert changes.newly_embedded == len(a.chunks) + len(b.chunks)


def test_a_replay_is_a_no_op_that_touches_nothing() -> None:
    items = [doc("a", long_text(40), title="A", metadata={"k": 1}), doc("b", "Short.")]
    plans = upsert_plan.decide(Texts(items), stored(items))
    assert statuses(plans) == ["no_op", "no_op"]
    assert all(p.chunks is None and p.embed_shas == [] for p in plans)
    assert upsert_plan.needed(plans, set()) == {}
    changes = upsert_plan.changes(plans)
    assert changes.writes == [] and changes.newly_embedded == 0


def test_a_new_title_retitles_the_kept_chunks_and_new_metadata_only_updates() -> None:
    before = [doc("a", long_text(40), title="Old"), doc("b", "Short.", metadata={"k": 1})]
    existing = stored(before)
    after = [doc("a", long_text(40), title="New"), doc("b", "Short.", metadata={"k": 2})]
    plans = upsert_plan.decide(Texts(after), existing)
    assert statuses(plans) == ["updated", "updated"]
    # Same content: nothing is chunked or embedded again, not even for the new title.
    assert all(p.chunks is None for p in plans)
    assert upsert_plan.needed(plans, set()) == {}
    changes = upsert_plan.changes(plans)
    assert changes.writes == plans
    assert changes.rewritten == [] and changes.old_chunk_ids == []
    assert [p.item.external_id for p in changes.retitled] == ["a"]
    assert changes.newly_embedded == 0


def test_changed_content_keeps_the_vectors_of_unchanged_chunks() -> None:
    before = [doc("a", long_text(60), title="T"), doc("b", "Untouched.")]
    existing = stored(before)
    old_a = existing["a"].chunks
    # Text added at the end: the windows before it are the same text, so the same vectors.
    after = [doc("a", long_text(60) + " A closing remark.", title="T"), doc("b", "Untouched.")]
    plans = upsert_plan.decide(Texts(after), existing)
    assert statuses(plans) == ["updated", "no_op"]
    a = plans[0]
    assert a.chunks is not None

    old_shas = {c.embed_sha256 for c in old_a}
    kept = [s for s in a.embed_shas if s in old_shas]
    new = [s for s in a.embed_shas if s not in old_shas]
    assert kept and new
    assert set(upsert_plan.needed(plans, set())) == set(new)

    changes = upsert_plan.changes(plans)
    assert changes.rewritten == [a] and changes.replaced == [existing["a"]]
    assert changes.old_chunk_ids == [c.id for c in old_a]  # every old row goes, kept or not
    assert changes.newly_embedded == len(new)
    fresh = {s: np.zeros(EMBEDDING_DIMS, dtype=np.float32) for s in new}
    vectors = changes.vectors(a, fresh)
    by_sha = {c.embed_sha256: c.embedding for c in old_a}
    for sha, vector in zip(a.embed_shas, vectors, strict=True):
        assert vector is (by_sha[sha] if sha in by_sha else fresh[sha])


def test_a_new_title_on_new_content_embeds_every_chunk_again() -> None:
    """The title is part of what a chunk embeds: a retitled rewrite reuses no vector."""
    existing = stored([doc("a", long_text(40), title="Old")])
    plans = upsert_plan.decide(Texts([doc("a", long_text(41), title="New")]), existing)
    (a,) = plans
    assert a.status == "updated" and a.chunks is not None
    assert set(upsert_plan.needed(plans, set())) == set(a.embed_shas)
    changes = upsert_plan.changes(plans)
    assert changes.retitled == []  # its chunks are rewritten, not retitled
    assert changes.newly_embedded == len(a.chunks)


def test_the_same_texts_are_chunked_once_however_often_planned() -> None:
    texts = Texts([doc("a", long_text(40))])
    first = upsert_plan.decide(texts, {})
    again = upsert_plan.decide(texts, {})
    assert texts.pending([0]) == []
    assert first[0].chunks is again[0].chunks


# --- metadata equality (app/models/json_equality.py) -----------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(value=_json)
def test_json_equality_ignores_only_how_a_value_is_written(value: object) -> None:
    """A value equals itself read back, with its keys reversed and its integers as floats; it
    never equals itself with a boolean turned into a number."""
    assert json_equal(value, json.loads(json.dumps(value)))

    def rewritten(v: object) -> object:
        if isinstance(v, dict):
            return {k: rewritten(x) for k, x in reversed(v.items())}
        if isinstance(v, list):
            return [rewritten(x) for x in v]
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**53:
            return float(v)
        return v

    def numbered(v: object) -> object:
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, dict):
            return {k: numbered(x) for k, x in v.items()}
        if isinstance(v, list):
            return [numbered(x) for x in v]
        return v

    assert json_equal(value, rewritten(value))
    assert json_equal(value, numbered(value)) == (json.dumps(value) == json.dumps(numbered(value)))


def test_a_metadata_change_of_json_type_is_an_update() -> None:
    first = [doc("a", "Same text.", metadata={"flag": 1, "n": 1})]
    existing = stored(first)
    for metadata, status in [
        ({"flag": True, "n": 1}, "updated"),
        ({"flag": 1, "n": 1.0}, "no_op"),
        ({"n": 1, "flag": 1}, "no_op"),
        ({"flag": "1", "n": 1}, "updated"),
    ]:
        (plan,) = upsert_plan.decide(Texts([doc("a", "Same text.", metadata=metadata)]), existing)
        assert plan.status == status, metadata
