"""A model-based concurrency check: several clients run random operations against a real server
at once, then the stored state is checked against what was acknowledged.

What must hold, whatever the interleaving:

- every document's stored state is the value of an acknowledged write to it (or absent) that no
  other acknowledged write to it strictly followed (one started after it was answered): the
  stored state equals some serial order of the acknowledged operations (a register per id);
- a refused request (4xx) changed nothing: its value is never the stored one unless an
  acknowledged write wrote the same;
- no answer is a 500;
- usage counts what is stored (documents and characters), and no quota was exceeded;
- a persona's attached documents all exist;
- a listing paged during the writes is in strict byte order, never repeats a document, and
  holds every document that nobody touched;
- a consumer of the changes feed that replayed it holds exactly the final state;
- a user deleted while their writes are in flight leaves nothing behind: a new user with the
  same email starts empty.

`run_model` takes clients (httpx.AsyncClient with base URLs, in process or over HTTP), so the
same workload runs on either engine, in one process or across several servers.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Document ids the writers fight over, and ids nobody writes after the start.
SHARED = [f"doc-{i}" for i in range(8)]
STABLE = [f"stable-{i}" for i in range(3)]
CONTENTS = [
    "Orders ship within two days from the warehouse.",
    "The Aurora lamp has a USB-C port and a dimmer.",
    "Returns are accepted within thirty days of delivery.",
]
#: Metadata values that differ only in JSON type: a no_op on one would drop a change.
METADATA: list[dict[str, Any]] = [
    {},
    {"flag": 1},
    {"flag": True},
    {"flag": 0},
    {"flag": False},
    {"flag": "1"},
    {"lang": "en", "n": [1, 2]},
]
TITLES: list[str | None] = [None, "Shipping", "Lamp"]


def canonical(value: dict[str, Any] | None) -> str | None:
    """A document's value as text with JSON types kept apart (`1` is not `true`)."""
    return None if value is None else json.dumps(value, sort_keys=True)


@dataclass
class Write:
    client: int
    external_id: str
    #: None for a delete.
    value: dict[str, Any] | None
    start: float
    end: float = 0.0
    status: int = 0

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    #: Every answer's (operation, status), to find 500s.
    answers: list[tuple[str, int]] = field(default_factory=list)
    listings: list[tuple[float, float, list[str]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _value(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": item["content"],
        "title": item.get("title"),
        "metadata": item.get("metadata", {}),
    }


async def _send(
    history: History, name: str, call: Awaitable[httpx.Response]
) -> httpx.Response | None:
    try:
        response = await call
    except httpx.TransportError as exc:  # a lost answer: the write may or may not have landed
        history.answers.append((name, 0))
        history.problems.append(f"{name}: transport error {exc!r}")
        return None
    history.answers.append((name, response.status_code))
    if response.status_code >= 500 and response.status_code != 503:
        history.problems.append(f"{name}: {response.status_code} {response.text[:300]}")
    return response


async def _put_one(
    index: int, api: httpx.AsyncClient, history: History, external_id: str, item: dict[str, Any]
) -> None:
    """PUT one document and record the write with the span it was in flight."""
    write = Write(index, external_id, _value(item), time.monotonic())
    r = await _send(
        history, "put_one", api.put(f"/api/knowledge/docs/by-external-id/{external_id}", json=item)
    )
    write.end, write.status = time.monotonic(), r.status_code if r is not None else 0
    history.writes.append(write)


async def _client(
    index: int, api: httpx.AsyncClient, rng: random.Random, ops: int, history: History
) -> None:
    personas: list[str] = []
    for _ in range(ops):
        roll = rng.random()
        if roll < 0.15:  # the same document twice, the metadata changed only in its JSON type
            external_id = rng.choice(SHARED)
            base = {"content": rng.choice(CONTENTS), "title": rng.choice(TITLES)}
            first, second = rng.choice([(1, True), (True, 1), (0, False), (1, 1.5), (1, "1")])
            for flag in (first, second):
                item = {**base, "metadata": {"flag": flag}}
                await _put_one(index, api, history, external_id, item)
        elif roll < 0.40:  # one document
            external_id = rng.choice(SHARED)
            item = {
                "content": rng.choice(CONTENTS),
                "title": rng.choice(TITLES),
                "metadata": rng.choice(METADATA),
            }
            await _put_one(index, api, history, external_id, item)
        elif roll < 0.55:  # a batch: all or nothing
            ids = rng.sample(SHARED, rng.randint(1, 4))
            items = [
                {
                    "external_id": i,
                    "content": rng.choice(CONTENTS),
                    "title": rng.choice(TITLES),
                    "metadata": rng.choice(METADATA),
                }
                for i in ids
            ]
            start = time.monotonic()
            r = await _send(
                history, "put_batch", api.put("/api/knowledge/docs", json={"items": items})
            )
            end, status = time.monotonic(), r.status_code if r is not None else 0
            for item in items:
                history.writes.append(
                    Write(index, item["external_id"], _value(item), start, end, status)
                )
        elif roll < 0.70:  # a delete (204 also when absent)
            external_id = rng.choice(SHARED)
            write = Write(index, external_id, None, time.monotonic())
            r = await _send(
                history, "delete", api.delete(f"/api/knowledge/docs/by-external-id/{external_id}")
            )
            write.end, write.status = time.monotonic(), r.status_code if r is not None else 0
            history.writes.append(write)
        elif roll < 0.80:  # a persona's attached set
            if not personas:
                r = await _send(
                    history,
                    "create_persona",
                    api.post("/api/personas", json={"name": f"P{index}"}),
                )
                if r is not None and r.status_code == 201:
                    personas.append(r.json()["id"])
                continue
            ids = rng.sample(SHARED, rng.randint(0, 3))
            await _send(
                history,
                "set_knowledge",
                api.put(f"/api/personas/{personas[0]}/knowledge", json={"external_ids": ids}),
            )
        else:  # a listing, paged small while the others write
            start, seen, cursor = time.monotonic(), [], None
            while True:
                params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
                r = await _send(history, "list", api.get("/api/knowledge/docs", params=params))
                if r is None or r.status_code != 200:
                    break
                page = r.json()
                seen += [d["external_id"] for d in page["items"]]
                if not (cursor := page["next_cursor"]):
                    history.listings.append((start, time.monotonic(), seen))
                    break


async def _feed(api: httpx.AsyncClient, stop: asyncio.Event, history: History) -> dict[str, str]:
    """Follow the changes feed in small pages while the writers run, then drain it; the mirror
    maps external_id -> content_sha256."""
    mirror: dict[str, str] = {}
    since: str | None = None
    while True:
        stopping = stop.is_set()
        while True:
            params = {"limit": "2", **({"since": since} if since else {})}
            r = await _send(history, "changes", api.get("/api/knowledge/changes", params=params))
            if r is None or r.status_code != 200:
                history.problems.append(f"changes: {None if r is None else r.text[:300]}")
                return mirror
            page = r.json()
            for change in page["changes"]:
                if change["op"] == "delete":
                    mirror.pop(change["external_id"], None)
                else:
                    mirror[change["external_id"]] = change["document"]["content_sha256"]
            since = page["next_since"]
            if not page["has_more"]:
                break
        if stopping:
            return mirror
        await asyncio.sleep(0.05)


@dataclass
class ModelRun:
    history: History
    final: dict[str, dict[str, Any]]
    mirror: dict[str, str] | None


async def run_model(
    clients: Sequence[httpx.AsyncClient],
    *,
    seed: int,
    ops: int,
    doc_limit: int,
    feed: bool = True,
) -> ModelRun:
    """Run the workload on `clients` (each with the same user's key) and check it."""
    history = History()
    first = clients[0]
    for external_id in STABLE:
        r = await first.put(
            f"/api/knowledge/docs/by-external-id/{external_id}", json={"content": "Never touched."}
        )
        assert r.status_code in (200, 201), r.text
    stop = asyncio.Event()
    follower = asyncio.create_task(_feed(clients[-1], stop, history)) if feed else None
    await asyncio.gather(
        *(
            _client(i, clients[i % len(clients)], random.Random(seed * 1000 + i), ops, history)
            for i in range(2 * len(clients))
        )
    )
    stop.set()
    mirror = await follower if follower is not None else None
    final = await _stored(first)
    check(history, final, mirror, doc_limit=doc_limit)
    await _check_usage(first, final, doc_limit)
    await _check_personas(first, final)
    return ModelRun(history, final, mirror)


async def _stored(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {
            "limit": "200",
            "include_content": "true",
            **({"cursor": cursor} if cursor else {}),
        }
        page = (await api.get("/api/knowledge/docs", params=params)).json()
        for d in page["items"]:
            out[d["external_id"]] = d
        if not (cursor := page["next_cursor"]):
            return out


def check(
    history: History,
    final: dict[str, dict[str, Any]],
    mirror: dict[str, str] | None,
    *,
    doc_limit: int,
) -> None:
    problems = list(history.problems)
    by_id: dict[str, list[Write]] = {}
    for w in history.writes:
        by_id.setdefault(w.external_id, []).append(w)
    for external_id in SHARED:
        writes = by_id.get(external_id, [])
        stored = final.get(external_id)
        got = canonical(_value(stored) if stored is not None else None)
        acked = [w for w in writes if w.acknowledged]
        unknown = [w for w in writes if w.status in (0, 503)]
        # Linearizable register: the final value is an acknowledged write that no other
        # acknowledged write strictly followed, or one whose answer was lost.
        candidates = {
            canonical(w.value)
            for w in acked
            if not any(o.start > w.end for o in acked if o is not w)
        } | {canonical(w.value) for w in unknown}
        if not acked:
            candidates.add(None)
        if got not in candidates:
            lines = [
                f"  client {w.client} {'delete' if w.value is None else canonical(w.value)}"
                f" [{w.start:.3f}, {w.end:.3f}] -> {w.status}"
                for w in sorted(writes, key=lambda w: w.start)
            ]
            problems.append(
                f"{external_id}: stored {got}, not a value some serial order gives:\n"
                + "\n".join(lines)
            )
    for external_id in STABLE:
        if external_id not in final:
            problems.append(f"{external_id} was never written after the start but is gone")
    for start, end, seen in history.listings:
        if seen != sorted(set(seen), key=str.encode):
            problems.append(f"a listing [{start:.3f}, {end:.3f}] is not strictly ordered: {seen}")
        missing = [s for s in STABLE if s not in seen]
        if missing:
            problems.append(f"a listing [{start:.3f}, {end:.3f}] lacks untouched {missing}")
    if len(final) > doc_limit:
        problems.append(f"{len(final)} documents stored, over the plan's {doc_limit}")
    if mirror is not None:
        expected = {k: v["content_sha256"] for k, v in final.items()}
        if mirror != expected:
            problems.append(f"the changes feed's replay differs: {mirror} != {expected}")
    statuses = {s for _, s in history.answers}
    if any(500 <= s < 600 and s != 503 for s in statuses):
        problems.append(f"a 5xx answer: {sorted(statuses)}")
    assert not problems, "\n".join(problems)


async def _check_usage(
    api: httpx.AsyncClient, final: dict[str, dict[str, Any]], limit: int
) -> None:
    usage = (await api.get("/api/subscription/usage")).json()["usage"]
    assert usage["knowledge_docs"]["used"] == len(final), usage
    assert usage["knowledge_chars"]["used"] == sum(d["char_count"] for d in final.values()), usage
    assert usage["knowledge_docs"]["used"] <= limit


async def _check_personas(api: httpx.AsyncClient, final: dict[str, dict[str, Any]]) -> None:
    page = (await api.get("/api/personas", params={"limit": "200"})).json()
    for persona in page["items"]:
        got = await api.get(f"/api/personas/{persona['id']}")
        assert got.status_code == 200, got.text
        full = got.json()
        dangling = set(full["knowledge_external_ids"]) - set(final)
        assert not dangling, f"persona {persona['id']} holds deleted documents {dangling}"
        assert full["knowledge_count"] == len(full["knowledge_external_ids"])


async def deleted_user_leaves_nothing(
    victim: httpx.AsyncClient,
    *,
    delete_user: Callable[[], Awaitable[None]],
    recreate: Callable[[], Awaitable[httpx.AsyncClient]],
    seed: int,
) -> None:
    """The victim writes batches; the user is deleted meanwhile. Every answer is a success or
    a 401, and the user made again with the same email starts empty."""
    rng = random.Random(seed)
    history = History()

    async def writer() -> None:
        for n in range(6):
            items = [
                {"external_id": f"v-{n}-{i}", "content": rng.choice(CONTENTS) + f" {n}.{i}"}
                for i in range(5)
            ]
            r = await _send(
                history, "victim", victim.put("/api/knowledge/docs", json={"items": items})
            )
            if r is not None and r.status_code == 401:
                return

    task = asyncio.create_task(writer())
    await asyncio.sleep(rng.uniform(0.05, 0.4))
    await delete_user()
    await task
    statuses = {s for _, s in history.answers}
    assert statuses <= {200, 401}, statuses
    async with await recreate() as again:
        assert (await again.get("/api/knowledge/docs")).json()["total"] == 0
        usage = (await again.get("/api/subscription/usage")).json()["usage"]
        assert usage["knowledge_docs"]["used"] == 0
        assert usage["knowledge_chars"]["used"] == 0
