"""The PostgreSQL search index: pgvector (HNSW, cosine) and full-text search with BM25.

Vectors: `chunks.embedding` is a `vector(384)` with an HNSW index (`vector_cosine_ops`). A
search asks for the user's nearest chunks in one statement; the planner scans a small user
exactly (through `ix_chunks_user_id` and a sort) and walks the HNSW graph for a large one, with
pgvector's iterative scan so that the user's condition is applied inside the index scan rather
than to a global top-k. Chunks are collapsed to documents by their nearest chunk, as on SQLite,
deepening while too few documents come back. A user small enough is scored from a matrix the
process keeps instead, checked against the user's version in the search's snapshot
(postgres_vectors.py): no statement per pass. A scope of document conditions (metadata, listed
external ids) is resolved to its chunk ids once per key of the user's data and ranked from them
(postgres_scopes.py); a persona scope is a subquery inside the statement.

Keywords: `chunk_terms` holds each chunk's terms (title and text, as `words.terms` makes them
for both engines) and its length; triggers derive from it per-user postings and statistics,
which `keywords.rank` reads best first (`postgres_keywords` answers its reads), a scope as its
chunk ids. A chunk's terms are written in one statement per call (the triggers run once for
it), and deleted here rather than by the cascade from `chunks`, which would run them once per
chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import ColumnElement, bindparam, column, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Chunk, KnowledgeDoc
from app.storage.index import (
    HitRow,
    Plan,
    Ranked,
    Restriction,
    TitledChunks,
    collapse,
    drive,
)
from app.storage.index import keywords as kw
from app.storage.index import postgres_keywords as keyword_reads
from app.storage.index.postgres_scopes import (
    Resolved,
    cacheable,
    nearest_in,
    resolve,
    scope_name,
)
from app.storage.index.postgres_vectors import (
    ResidentVectors,
    in_scope,
    nearest,
    remember_version,
)
from app.storage.index.resident import Resident, held_docs
from app.storage.index.scope import MetadataCondition, Scope
from app.storage.index.scope_cache import ScopeCache
from app.storage.index.words import query_terms, terms

#: Nearest chunks fetched per wanted document (documents of many chunks crowd the list), at
#: least `CANDIDATES_MIN`; deepened four-fold while too few documents come back.
CANDIDATES_PER_DOC = 8
CANDIDATES_MIN = 400
#: pgvector caps `hnsw.ef_search` at 1000; iterative scans go on past it when filters drop rows.
_EF_SEARCH_MAX = 1000

T = TypeVar("T")


#: jsonb, which compares as app/models/json_equality.py defines JSON equality, cannot hold
#: U+0000, which `json` (the column's type) and so stored metadata can (and `json`'s own
#: operators refuse a document holding one). Such a document is mapped into jsonb by a
#: one-to-one rewrite of its strings, U+FFFF to U+FFFF U+FFFF and U+0000 to U+FFFF "0", done on
#: its JSON text in SQL (`_REWRITTEN`) and on the filter's key and value in Python (`_escaped`).
#: Every other document is cast as it is.
_ESCAPE, _NUL = "\uffff", "\x00"
#: A JSON text that may hold U+0000 or U+FFFF (escaped, as Python's encoder writes them, or
#: not); the rewrite of one that holds neither changes nothing.
_MAY_NEED = r"\\u(0000|[fF]{4})|\uffff"
#: The rewrite, in three passes over the text: an escaped backslash becomes `\u005c` (the same
#: character), so that each `\u` left starts an escape; then U+FFFF doubles; then U+0000
#: becomes U+FFFF "0". Patterns and replacements are bound as parameters.
_REWRITTEN = (
    "regexp_replace(regexp_replace(regexp_replace(knowledge_docs.metadata::text, :ra{i}, :rb{i}, "
    "'g'), :rc{i}, :rd{i}, 'g'), :re{i}, :rf{i}, 'g')"
)
_REWRITE = {
    "ra": r"\\\\",
    "rb": r"\\u005c",
    "rc": r"\\u[fF]{4}|\uffff",
    "rd": r"\\uffff\\uffff",
    "re": r"\\u0000",
    "rf": r"\\uffff0",
}


def _escaped(value: Any) -> Any:
    """`value` with the rewrite `_REWRITTEN` makes of a stored document applied to its strings."""
    if isinstance(value, str):
        return value.replace(_ESCAPE, _ESCAPE * 2).replace(_NUL, _ESCAPE + "0")
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    return value


def metadata_condition(i: int, key: str, value: Any) -> ColumnElement[bool]:
    """`metadata -> key = value` as jsonb: numbers compare by value, `true` is not `1`, a missing
    key is not null, and objects compare in any key order: JSON equality as
    app/models/json_equality.py defines it."""
    document = (
        f"(CASE WHEN knowledge_docs.metadata::text ~ :rx{i} THEN {_REWRITTEN.format(i=i)} "
        "ELSE knowledge_docs.metadata::text END)::jsonb"
    )
    params: dict[str, object] = {
        f"rx{i}": _MAY_NEED,
        **{f"{name}{i}": pattern for name, pattern in _REWRITE.items()},
        f"mk{i}": _escaped(key),
        f"mv{i}": json.dumps(_escaped(value)),
    }
    sql = f"{document} -> :mk{i} = CAST(:mv{i} AS jsonb)"
    return text(sql).bindparams(**params)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ScopeSql:
    """A scope as a subquery of document ids, used inside the semantic statements; a scope of
    document conditions alone also as its chunk ids (`resolved`), which the semantic passes
    and the keyword ranking use instead (postgres_scopes.py)."""

    scope: Scope
    resolved: Resolved | None = None

    @property
    def empty(self) -> bool:
        return self.scope.nothing or (self.resolved is not None and not len(self.resolved.ids))


class PostgresIndex:
    def __init__(self, *, vector_cache_bytes: int = 0) -> None:
        #: Small users' matrices, kept across searches (app/storage/index/postgres_vectors.py).
        self.residents = ResidentVectors(vector_cache_bytes)
        #: Resolved scopes of document conditions, per key of the user's data
        #: (app/storage/index/postgres_scopes.py), bounded as the matrices.
        self.scopes: ScopeCache[Resolved] = ScopeCache(vector_cache_bytes)

    async def put_many(
        self, session: AsyncSession, *, user_id: int, docs: Sequence[TitledChunks]
    ) -> None:
        # The vectors are the chunk rows' own column, which the HNSW index follows. One
        # statement for all the chunks of all the documents: the postings triggers run once.
        titled = [(_terms(title), chunks) for title, chunks in docs]
        rows = [(title, c) for title, chunks in titled for c in chunks]
        if not rows:
            return
        await session.execute(
            text(
                "INSERT INTO chunk_terms (chunk_id, user_id, terms, length)"
                " SELECT x.c, :u, string_to_array(x.t, ' '), x.n"
                " FROM unnest(CAST(:c AS bigint[]), CAST(:t AS text[]), CAST(:n AS integer[]))"
                " AS x(c, t, n)"
            ),
            _term_rows([(c.id, title + _terms(c.text)) for title, c in rows], u=user_id),
        )

    async def retitle(
        self, session: AsyncSession, *, title: str | None, chunk_ids: Sequence[int]
    ) -> None:
        if not chunk_ids:
            return
        rows = (
            await session.execute(
                text("SELECT id, text FROM chunks WHERE id = ANY(:ids)"),
                {"ids": list(chunk_ids)},
            )
        ).all()
        title_terms = _terms(title)
        await session.execute(
            text(
                "UPDATE chunk_terms SET terms = string_to_array(x.t, ' '), length = x.n"
                " FROM unnest(CAST(:c AS bigint[]), CAST(:t AS text[]), CAST(:n AS integer[]))"
                " AS x(c, t, n) WHERE chunk_terms.chunk_id = x.c"
            ),
            _term_rows([(cid, title_terms + _terms(body)) for cid, body in rows]),
        )

    async def delete(self, session: AsyncSession, chunk_ids: Sequence[int]) -> None:
        # The chunk_terms rows would go with their chunks (ON DELETE CASCADE), but one row at a
        # time, each a run of the postings triggers; deleted here they go in one statement.
        if chunk_ids:
            await session.execute(
                text("DELETE FROM chunk_terms WHERE chunk_id = ANY(:ids)"),
                {"ids": list(chunk_ids)},
            )

    async def restrict(self, session: AsyncSession, scope: Scope) -> ScopeSql | None:
        """The scope's SQL; for a scope of document conditions, also its chunk ids, kept until
        the key of the user's data changes (postgres_scopes.py)."""
        if scope.everything:
            return None
        if scope.nothing or not cacheable(scope):
            return ScopeSql(scope)
        name = await scope_name(session, scope)
        resolved = self.scopes.get(name)
        if resolved is None:
            resolved = await resolve(session, scope, metadata_condition)
            self.scopes.put(name, resolved)
        return ScopeSql(scope, resolved)

    async def metadata_sql(self, session: AsyncSession, values: Iterable[Any]) -> MetadataCondition:
        """`metadata_condition`: plain SQL, nothing to prepare."""
        return metadata_condition

    def ranker(
        self, session: AsyncSession, *, user_id: int, within: Restriction | None
    ) -> PostgresRanker:
        return PostgresRanker(self, session, user_id, within)

    async def semantic(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        vector: np.ndarray,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        return await self.ranker(session, user_id=user_id, within=within).rank(vector, depth)

    async def semantic_sql(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        vector: np.ndarray,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        """`semantic` in SQL (pgvector), for a user whose matrix is not kept. A scope with its
        chunk ids is ranked from them (`postgres_scopes.nearest_in`: exactly, or from the
        user's own walk filtered here); a persona scope by its SQL inside the statement."""
        q = np.asarray(vector, dtype=np.float32)
        resolved = None if within is None else _resolved(within)

        async def walk(n: int) -> list[tuple[int, str, float]]:
            return await _nearest_chunks(session, user_id, q, n, None)

        if resolved is not None:
            return await nearest_in(
                session,
                resolved,
                q,
                depth,
                least=CANDIDATES_MIN,
                per_doc=CANDIDATES_PER_DOC,
                walk=walk,
            )
        scope = _scope(within)
        n = max(CANDIDATES_MIN, CANDIDATES_PER_DOC * depth)
        while True:
            rows = await _nearest_chunks(session, user_id, q, n, scope)
            ranked = collapse(rows, depth)
            if len(ranked) >= depth or len(rows) < n:
                return ranked
            n *= 4

    async def keyword(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        query: str,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        """`keywords.rank` over the user's postings (reads: `postgres_keywords`); a scope as
        its chunk ids (kept ones when `restrict` resolved them, else read now)."""
        wanted = query_terms(query)
        if not wanted:
            return []
        ids = None
        if isinstance(within, ScopeSql):
            ids = (
                within.resolved.ids
                if within.resolved is not None
                else await self.scope_chunks(session, within.scope)
            )

        async def answer(step: kw.Step) -> object:
            if isinstance(step, kw.Start):
                stats, postings, version = await keyword_reads.start(session, user_id, step)
                remember_version(session, user_id, version)
                return stats, postings
            if isinstance(step, kw.Held):
                # Only a matrix already kept for this snapshot (its version was read with the
                # postings): none is built for it.
                return held_docs(await self.residents.kept(session, user_id), step.chunk_ids)
            return await keyword_reads.answer(session, user_id, step)

        return await kw.run_async(kw.rank(wanted, depth, ids), answer)

    async def scope_chunks(self, session: AsyncSession, scope: Scope) -> np.ndarray:
        """The chunk ids of the scope's documents, sorted."""
        docs = select(col(KnowledgeDoc.id)).where(*scope.conditions(metadata_condition))
        found = (
            await session.execute(
                select(col(Chunk.id)).where(col(Chunk.doc_id).in_(docs)).order_by(col(Chunk.id))
            )
        ).scalars()
        return np.fromiter(found, dtype=np.int64)

    async def count(self, session: AsyncSession, *, user_id: int) -> int:
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM chunks WHERE user_id = :u"), {"u": user_id}
                )
            ).scalar_one()
        )


class PostgresRanker:
    """One search's semantic passes: from the user's kept matrix when there is one (read on the
    first pass, or by `prepare` while the query is embedded; a scope is then the rows of its
    documents, found in one statement), else one ranking statement each (the HNSW walk or the
    exact scan) with the feedback vectors read by id."""

    def __init__(
        self, index: PostgresIndex, session: AsyncSession, user_id: int, within: Restriction | None
    ) -> None:
        self.index = index
        self.session = session
        self.user_id = user_id
        self.within = within
        self._loaded = False
        self._resident: Resident | None = None
        self._rows: np.ndarray | None = None

    async def prepare(self, depth: int) -> None:
        await self._load()

    async def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        resident = await self.index.residents.current(self.session, self.user_id)
        scope = _scope(self.within)
        resolved = None if self.within is None else _resolved(self.within)
        if resident is not None and resolved is not None:
            self._rows = resident.rows_of(resolved.ids)
        elif resident is not None and scope is not None:
            docs = select(col(KnowledgeDoc.id)).where(*scope.conditions(metadata_condition))
            found = (await self.session.execute(docs)).scalars().all()
            self._rows = in_scope(resident, found)
        self._resident = resident

    async def rank(self, vector: np.ndarray, depth: int) -> list[Ranked]:
        await self._load()
        if self._resident is not None:
            return nearest(self._resident, self._rows, vector, depth)
        return await self.index.semantic_sql(
            self.session, user_id=self.user_id, vector=vector, depth=depth, within=self.within
        )

    async def vectors(self, chunk_ids: Sequence[int]) -> list[np.ndarray]:
        if self._resident is not None:
            return self._resident.vectors(chunk_ids)
        rows = await self.session.execute(
            select(col(Chunk.embedding)).where(col(Chunk.id).in_(list(chunk_ids)))
        )
        return [np.asarray(row[0], dtype=np.float32) for row in rows]

    async def hit_rows(self, chunk_ids: Sequence[int]) -> list[HitRow]:
        if not chunk_ids:
            return []
        rows = await self.session.execute(_HIT_ROWS, {"ids": list(chunk_ids)})
        return [tuple(row) for row in rows]

    async def run(self, plan: Plan[T], *, last: bool = False) -> T:
        return await drive(plan, self)


#: The columns a hit shows: not the document's content nor the chunk's vector.
_HIT_ROWS = text(
    "SELECT c.id, c.chunk_index, c.text, d.external_id, d.title, d.metadata"
    " FROM chunks AS c JOIN knowledge_docs AS d ON d.id = c.doc_id"
    " WHERE c.id IN :ids"
).bindparams(bindparam("ids", expanding=True))


def _terms(text: str | None) -> list[str]:
    return terms(text or "")


def _term_rows(chunks: Sequence[tuple[int, list[str]]], **extra: object) -> dict[str, object]:
    """Parameters of a statement over `unnest(:c, :t, :n)`: each chunk's id, its terms
    space-separated (`string_to_array` splits them again; a term has no space), and its length
    for BM25 (`keywords.length`)."""
    return {
        **extra,
        "c": [cid for cid, _ in chunks],
        "t": [" ".join(found) for _, found in chunks],
        "n": [kw.length(len(found)) for _, found in chunks],
    }


def _scope(within: Restriction | None) -> Scope | None:
    if within is None:
        return None
    assert isinstance(within, ScopeSql)
    return within.scope


def _resolved(within: Restriction) -> Resolved | None:
    assert isinstance(within, ScopeSql)
    return within.resolved


async def _nearest_chunks(
    session: AsyncSession, user_id: int, q: np.ndarray, n: int, scope: Scope | None
) -> list[tuple[int, str, float]]:
    """The user's (the scope's) `n` chunks nearest to `q` as (chunk, document, cosine
    distance): an HNSW walk with iterative scans, or an exact scan, as the planner chooses."""
    in_scope = "" if scope is None else "AND c.doc_id IN (SELECT id FROM scope_docs)"
    await session.execute(
        text(
            "SELECT set_config('hnsw.ef_search', :ef, true),"
            " set_config('hnsw.iterative_scan', 'relaxed_order', true)"
        ),
        {"ef": str(min(n, _EF_SEARCH_MAX))},
    )
    rows = await session.execute(
        _scoped(
            "SELECT c.id, c.doc_id, c.embedding <=> :q AS d FROM chunks AS c"
            f" WHERE c.user_id = :u {in_scope} ORDER BY c.embedding <=> :q LIMIT :n",
            scope,
            ("id", "doc_id", "d"),
        ),
        {"q": q, "u": user_id, "n": n},
    )
    return [(int(c), str(doc), float(d)) for c, doc, d in rows]


def _scoped(sql: str, scope: Scope | None, columns: Sequence[str]) -> Any:
    """`sql`, which reads the scope's documents from `scope_docs` when there is a scope, with
    that CTE rendered in front (the scope's query) and its `columns` selected."""
    if scope is None:
        return text(sql)
    docs = select(col(KnowledgeDoc.id)).where(*scope.conditions(metadata_condition))
    inner = text(sql).columns(*(column(c) for c in columns)).subquery("r")
    return select(*(inner.c[c] for c in columns)).add_cte(docs.cte("scope_docs"))
