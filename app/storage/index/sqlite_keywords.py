"""SQLite's keyword index: the tables of `keywords` (revision 0013), kept by triggers on
`chunk_terms`, and the reads `keywords.rank` asks for.

A chunk's terms are stored as a JSON array (the triggers split it with `json_each`, the one
splitter SQLite's triggers have). Every read is a range or a probe of `chunk_postings`' two
B-trees within one user's keys, so one user's size never slows another's search.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import sqlean
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.index import Ranked
from app.storage.index import keywords as kw
from app.storage.index.keywords import IMPACT_SQL
from app.storage.index.resident import Resident, held_docs
from app.storage.index.words import terms

#: The tables (revision 0013; app/storage/index/keywords.py says what each holds).
TABLES = (
    # The record; the triggers below derive the rest from it. Replaced, never updated.
    "CREATE TABLE chunk_terms ("
    " chunk_id INTEGER NOT NULL PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,"
    " user_id INTEGER NOT NULL, terms TEXT NOT NULL, length INTEGER NOT NULL)",
    "CREATE TABLE chunk_postings ("
    " user_id INTEGER NOT NULL, term TEXT NOT NULL, chunk_id INTEGER NOT NULL,"
    " tf INTEGER NOT NULL, length INTEGER NOT NULL, impact REAL NOT NULL,"
    " PRIMARY KEY (user_id, term, chunk_id)) WITHOUT ROWID",
    "CREATE TABLE keyword_df ("
    " user_id INTEGER NOT NULL, term TEXT NOT NULL, df INTEGER NOT NULL,"
    " PRIMARY KEY (user_id, term)) WITHOUT ROWID",
    "CREATE TABLE keyword_stats ("
    " user_id INTEGER NOT NULL PRIMARY KEY, chunks INTEGER NOT NULL, words INTEGER NOT NULL)",
)

IMPACT_INDEX = (
    "CREATE INDEX ix_chunk_postings_impact"
    " ON chunk_postings (user_id, term, impact DESC, chunk_id, tf, length)"
)

TRIGGERS = (
    f"""CREATE TRIGGER chunk_terms_add AFTER INSERT ON chunk_terms BEGIN
    INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length, impact)
        SELECT user_id, term, chunk_id, tf, length, {IMPACT_SQL} FROM (
            SELECT NEW.user_id AS user_id, value AS term, NEW.chunk_id AS chunk_id,
                count(*) AS tf, NEW.length AS length
            FROM json_each(NEW.terms) GROUP BY value);
    INSERT INTO keyword_df (user_id, term, df)
        SELECT NEW.user_id, value, 1 FROM json_each(NEW.terms) WHERE true GROUP BY value
        ON CONFLICT (user_id, term) DO UPDATE SET df = df + 1;
    INSERT INTO keyword_stats (user_id, chunks, words) VALUES (NEW.user_id, 1, NEW.length)
        ON CONFLICT (user_id) DO UPDATE SET chunks = chunks + 1, words = words + excluded.words;
END""",
    """CREATE TRIGGER chunk_terms_remove AFTER DELETE ON chunk_terms BEGIN
    DELETE FROM chunk_postings WHERE user_id = OLD.user_id AND chunk_id = OLD.chunk_id
        AND term IN (SELECT value FROM json_each(OLD.terms));
    UPDATE keyword_df SET df = df - 1
        WHERE user_id = OLD.user_id AND term IN (SELECT value FROM json_each(OLD.terms));
    DELETE FROM keyword_df WHERE user_id = OLD.user_id AND df <= 0
        AND term IN (SELECT value FROM json_each(OLD.terms));
    UPDATE keyword_stats SET chunks = chunks - 1, words = words - OLD.length
        WHERE user_id = OLD.user_id;
    DELETE FROM keyword_stats WHERE user_id = OLD.user_id AND chunks <= 0;
END""",
    # An update would need both of the above: the index replaces rows instead, and any other
    # writer is told so rather than leaving the postings behind.
    """CREATE TRIGGER chunk_terms_no_update BEFORE UPDATE ON chunk_terms BEGIN
    SELECT RAISE(ABORT, 'chunk_terms rows are deleted and inserted, never updated');
END""",
)

#: The derived tables emptied and refilled from `chunk_terms` in their keys' order (sorted once
#: and appended, several times faster than the triggers' row by row). For the migration and bulk
#: loads, with the triggers and the impact index dropped (`DERIVATIONS`), the writer alone.
DERIVE = (
    "DELETE FROM chunk_postings",
    "DELETE FROM keyword_df",
    "DELETE FROM keyword_stats",
    "INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length, impact)"
    f" SELECT user_id, term, chunk_id, tf, length, {IMPACT_SQL} FROM ("
    "  SELECT t.user_id AS user_id, j.value AS term, t.chunk_id AS chunk_id,"
    "   count(*) AS tf, t.length AS length"
    "  FROM chunk_terms AS t CROSS JOIN json_each(t.terms) AS j"
    "  GROUP BY t.user_id, j.value, t.chunk_id) ORDER BY user_id, term, chunk_id",
    "INSERT INTO keyword_df (user_id, term, df)"
    " SELECT user_id, term, count(*) FROM chunk_postings GROUP BY user_id, term",
    "INSERT INTO keyword_stats (user_id, chunks, words)"
    " SELECT user_id, count(*), sum(length) FROM chunk_terms GROUP BY user_id",
)

#: What keeps the derived tables in step row by row, dropped for a bulk load and made again
#: (`IMPACT_INDEX`, `TRIGGERS`) after `DERIVE`.
DERIVATIONS = (
    "DROP TRIGGER IF EXISTS chunk_terms_add",
    "DROP TRIGGER IF EXISTS chunk_terms_remove",
    "DROP TRIGGER IF EXISTS chunk_terms_no_update",
    "DROP INDEX IF EXISTS ix_chunk_postings_impact",
)


def _row(chunk_id: int, user_id: int, found: list[str]) -> dict[str, object]:
    return {"c": chunk_id, "u": user_id, "t": json.dumps(found), "n": kw.length(len(found))}


_INSERT = text("INSERT INTO chunk_terms (chunk_id, user_id, terms, length) VALUES (:c, :u, :t, :n)")


class KeywordIndex:
    async def put_titled(
        self, session: AsyncSession, *, user_id: int, chunks: Sequence[tuple[int, str | None, str]]
    ) -> None:
        """Index new chunks (ids not indexed yet, as for the vectors), of one document or
        several: (chunk id, its document's title, text)."""
        if chunks:
            await session.execute(
                _INSERT,
                [
                    _row(cid, user_id, terms(title or "") + terms(body))
                    for cid, title, body in chunks
                ],
            )

    async def retitle(
        self, session: AsyncSession, *, title: str | None, chunk_ids: Iterable[int]
    ) -> None:
        ids = list(chunk_ids)
        title_terms = terms(title or "")
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            rows = (
                await session.execute(
                    text("SELECT id, user_id, text FROM chunks WHERE id IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": batch},
                )
            ).all()
            await self.delete(session, batch)
            await session.execute(
                _INSERT, [_row(cid, uid, title_terms + terms(body)) for cid, uid, body in rows]
            )

    def rank(
        self,
        conn: sqlean.Connection,
        *,
        user_id: int,
        wanted: list[str],
        depth: int,
        scope: np.ndarray | None = None,
        held: Resident | None = None,
        champions: int | None = None,
    ) -> list[Ranked]:
        """`keywords.rank` on this connection (run on its own thread: `run_on_connection`);
        `held`, the user's kept matrix, names the chunks it holds without a read."""

        def answer(step: kw.Step) -> object:
            if isinstance(step, kw.Start):
                stats = _statistics(conn, user_id, step.terms)
                return stats, [] if step.limit is None else _best(
                    conn, user_id, step.terms, step.limit
                )
            if isinstance(step, kw.Best):
                return _best(conn, user_id, step.terms, step.limit)
            if isinstance(step, kw.Lookup):
                return _lookup(conn, user_id, step.terms, step.chunk_ids)
            if isinstance(step, kw.Held):
                return held_docs(held, step.chunk_ids)
            return docs(conn, step.chunk_ids)

        return kw.run_sync(kw.rank(wanted, depth, scope, champions=champions), answer)

    async def delete(self, session: AsyncSession, chunk_ids: Iterable[int]) -> None:
        ids = list(chunk_ids)
        for start in range(0, len(ids), 500):
            await session.execute(
                text("DELETE FROM chunk_terms WHERE chunk_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": ids[start : start + 500]},
            )


def _statistics(conn: sqlean.Connection, user_id: int, wanted: list[str]) -> kw.Statistics:
    found = conn.execute(
        "SELECT chunks, words FROM keyword_stats WHERE user_id = ?", (user_id,)
    ).fetchone()
    df = conn.execute(
        "SELECT d.term, d.df FROM json_each(?) AS t"
        " CROSS JOIN keyword_df AS d ON d.user_id = ? AND d.term = t.value",
        (json.dumps(wanted), user_id),
    ).fetchall()
    chunks, words = found if found is not None else (0, 0)
    return kw.Statistics(int(chunks), int(words), {str(t): int(n) for t, n in df})


def _best(conn: sqlean.Connection, user_id: int, wanted: list[str], limit: int) -> list[kw.Posting]:
    rows: list[kw.Posting] = []
    for term in wanted:
        rows += conn.execute(
            "SELECT term, chunk_id, tf, length FROM chunk_postings"
            " INDEXED BY ix_chunk_postings_impact"
            " WHERE user_id = ? AND term = ? ORDER BY impact DESC, chunk_id LIMIT ?",
            (user_id, term, limit),
        ).fetchall()
    return rows


def _lookup(
    conn: sqlean.Connection, user_id: int, wanted: list[str], chunk_ids: list[int]
) -> list[kw.Posting]:
    found: list[kw.Posting] = conn.execute(
        "SELECT p.term, p.chunk_id, p.tf, p.length FROM json_each(?) AS t"
        " CROSS JOIN json_each(?) AS c"
        " CROSS JOIN chunk_postings AS p"
        " ON p.user_id = ? AND p.term = t.value AND p.chunk_id = c.value",
        (json.dumps(wanted), json.dumps(chunk_ids), user_id),
    ).fetchall()
    return found


def docs(conn: sqlean.Connection, chunk_ids: list[int]) -> list[str | None]:
    """The document of each of `chunk_ids`, in order (None: gone)."""
    found = dict(
        conn.execute(
            "SELECT c.id, c.doc_id FROM json_each(?) AS j CROSS JOIN chunks AS c ON c.id = j.value",
            (json.dumps(chunk_ids),),
        ).fetchall()
    )
    return [found.get(i) for i in chunk_ids]
