"""The upsert planner: what a batch of documents does to what is stored, decided without writing.

For each item, against the stored document of its external_id (if any): `created`, `updated`
(new content, or the same content with a new title or metadata, compared as JSON:
app/models/json_equality.py) or `no_op`; for content that is new, its chunks and the text each
chunk embeds. Across the batch (`Changes`): which chunk rows
go, which of their vectors are kept for chunks whose embedded text is unchanged, which chunks
only change title, and what still needs the model.

It reads and writes nothing: app/services/knowledge.py loads the stored rows, plans (twice: once
against a read snapshot, once inside the write) and writes what the plan says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.embedding.chunking import TextChunk, chunk_texts, embedding_title, join_title, sha256_hex
from app.models import Chunk, KnowledgeDoc, KnowledgeDocItem, UpsertStatus
from app.models.json_equality import json_equal
from app.models.knowledge import Vectors
from app.services import offload


@dataclass
class Existing:
    """A stored document (its content not loaded) and, when it is rewritten or retitled, its
    chunk rows in order."""

    doc: KnowledgeDoc
    chunks: list[Chunk]


@dataclass
class ItemPlan:
    item: KnowledgeDocItem
    status: UpsertStatus
    existing: Existing | None
    content_sha: str
    #: Set when content changed (or is new): the new chunks and the hash of what each embeds.
    chunks: list[TextChunk] | None = None
    embed_shas: list[str] = field(default_factory=list)
    embed_texts: list[str] = field(default_factory=list)
    #: The document as stored once the upsert is done (its content not loaded).
    doc: KnowledgeDoc | None = None


class Texts:
    """What each item of a request makes: its content's hash and, only for content that is
    new, its chunks and the text (and hash) each chunk embeds. Worked out once per request,
    however many times it is planned."""

    def __init__(self, items: Sequence[KnowledgeDocItem]) -> None:
        self.items = items
        self.content_shas = [sha256_hex(i.content) for i in items]
        self._chunked: dict[int, tuple[list[TextChunk], list[str], list[str]]] = {}

    def pending(self, indexes: Sequence[int]) -> list[int]:
        return [i for i in dict.fromkeys(indexes) if i not in self._chunked]

    def chunk(self, indexes: Sequence[int]) -> None:
        todo = self.pending(indexes)
        if not todo:
            return
        for i, chunks in zip(todo, chunk_texts([self.items[i].content for i in todo]), strict=True):
            title = embedding_title(self.items[i].title)
            texts = [join_title(title, c.text) for c in chunks]
            self._chunked[i] = (chunks, texts, [sha256_hex(t) for t in texts])

    def chunked(self, i: int) -> tuple[list[TextChunk], list[str], list[str]]:
        return self._chunked[i]


async def texts_of(items: Sequence[KnowledgeDocItem]) -> Texts:
    """The request's `Texts`, hashed in a worker thread when there is much content (as the
    intake parses a large body)."""
    return await offload.off_loop(sum(len(i.content) for i in items), lambda: Texts(items))


def rewrites(texts: Texts, existing: Mapping[str, Existing]) -> list[int]:
    """The items whose content is new or changed: those that get new chunks."""
    return [
        i
        for i, item in enumerate(texts.items)
        if (old := existing.get(item.external_id)) is None
        or old.doc.content_sha256 != texts.content_shas[i]
    ]


async def plan(texts: Texts, existing: Mapping[str, Existing]) -> list[ItemPlan]:
    """`decide`, with the content that changed chunked in a worker thread when there is much of
    it (a 10 MB batch being about a second of it)."""
    todo = texts.pending(rewrites(texts, existing))
    await offload.off_loop(
        sum(len(texts.items[i].content) for i in todo), lambda: texts.chunk(todo)
    )
    return decide(texts, existing)


def decide(texts: Texts, existing: Mapping[str, Existing]) -> list[ItemPlan]:
    """Each item's plan against `existing` (stored documents by external_id), in item order.
    Chunks what still needs it on the spot (`plan` does that off the event loop first)."""
    texts.chunk(rewrites(texts, existing))
    plans: list[ItemPlan] = []
    for i, (item, sha) in enumerate(zip(texts.items, texts.content_shas, strict=True)):
        old = existing.get(item.external_id)
        if old is None or old.doc.content_sha256 != sha:
            chunks, embed_texts, embed_shas = texts.chunked(i)
            status: UpsertStatus = "created" if old is None else "updated"
            plans.append(
                ItemPlan(
                    item,
                    status,
                    old,
                    sha,
                    chunks=chunks,
                    embed_texts=embed_texts,
                    embed_shas=embed_shas,
                )
            )
        else:
            # JSON equality, not Python's `==` (for which `1 == True`): the one definition the
            # search's metadata filter uses too.
            same = old.doc.title == item.title and json_equal(old.doc.metadata_, item.metadata)
            plans.append(ItemPlan(item, "no_op" if same else "updated", old, sha, doc=old.doc))
    return plans


def needed(plans: Sequence[ItemPlan], have: set[str]) -> dict[str, str]:
    """Hash -> text of everything the plans embed that no known vector covers."""
    need: dict[str, str] = {}
    for p in plans:
        reusable = {c.embed_sha256 for c in p.existing.chunks} if p.existing else set()
        for sha, t in zip(p.embed_shas, p.embed_texts, strict=True):
            if sha not in have and sha not in reusable:
                need[sha] = t
    return need


@dataclass
class Changes:
    """What writing a batch's plans does to the stored rows."""

    #: The documents saved: created or updated.
    writes: list[ItemPlan]
    #: Those whose content is new: their chunk rows are written afresh.
    rewritten: list[ItemPlan]
    #: The stored documents among them, whose old chunk rows are deleted...
    replaced: list[Existing]
    #: ...these, with their index entries.
    old_chunk_ids: list[int]
    #: The old rows' vectors by the hash of the text they embed: a chunk whose embedded text is
    #: unchanged keeps its vector.
    reused: dict[str, Vectors]
    #: Same content, new title: the chunk rows stay, the index takes the new title.
    retitled: list[ItemPlan]
    #: Chunk vectors the rewritten documents did not have before (the usage count).
    newly_embedded: int

    def vectors(self, p: ItemPlan, fresh: Mapping[str, Vectors]) -> list[Vectors]:
        """The vector of each of `p`'s new chunks: kept from an old row, else from `fresh`."""
        return [self.reused[s] if s in self.reused else fresh[s] for s in p.embed_shas]


def changes(plans: Sequence[ItemPlan]) -> Changes:
    """The batch's `Changes`, decided from the plans before anything is written (a retitle is
    told by the stored title, which the write then replaces)."""
    writes = [p for p in plans if p.status != "no_op"]
    rewritten = [p for p in writes if p.chunks is not None]
    replaced = [p.existing for p in rewritten if p.existing is not None]
    newly_embedded = 0
    for p in rewritten:
        own = {c.embed_sha256 for c in p.existing.chunks} if p.existing else set()
        newly_embedded += sum(1 for s in p.embed_shas if s not in own)
    return Changes(
        writes=writes,
        rewritten=rewritten,
        replaced=replaced,
        old_chunk_ids=[c.id for e in replaced for c in e.chunks if c.id is not None],
        reused={c.embed_sha256: c.embedding for e in replaced for c in e.chunks},
        retitled=[
            p
            for p in writes
            if p.existing is not None and p.chunks is None and p.existing.doc.title != p.item.title
        ],
        newly_embedded=newly_embedded,
    )
