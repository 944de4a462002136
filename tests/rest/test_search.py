"""`POST /api/knowledge/search` through HTTP, against the real model and a real SQLite file
(API.md section 9)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.models.search import SEARCH_JUNK_THRESHOLD
from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
SEARCH = "/api/knowledge/search"
MODES = ("hybrid", "semantic", "keyword")

CORPUS: list[dict[str, Any]] = [
    {
        "external_id": "lamp",
        "title": "Desk lamp",
        "content": "The Zephyrine desk lamp has a USB-C port and three brightness levels.",
        "metadata": {"kind": "product", "stock": 3, "lang": "en"},
    },
    {
        "external_id": "shipping",
        "title": "Delivery times",
        "content": "Orders leave our warehouse within two business days.",
        "metadata": {"kind": "policy", "lang": "en"},
    },
    {
        "external_id": "refund",
        "title": "Refunds",
        "content": "You can return any item within 30 days for a full refund.",
        "metadata": {"kind": "policy", "lang": "de"},
    },
    {
        "external_id": "felines",
        "content": "Felines enjoy sleeping in warm sunny spots for most of the afternoon.",
        "metadata": {"kind": "blog", "draft": True},
    },
    {
        "external_id": "volcano",
        "content": "Magma rising through the crust erupts as lava from the mountain's vent.",
        "metadata": {"kind": "blog", "draft": False, "tags": ["geo", "science"]},
    },
]


async def load(api: httpx.AsyncClient, items: list[dict[str, Any]] = CORPUS) -> None:
    r = await api.put(DOCS, json={"items": items})
    assert r.status_code == 200, r.text


async def search(api: httpx.AsyncClient, query: str, **body: Any) -> dict[str, Any]:
    r = await api.post(SEARCH, json={"query": query, **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def ids(api: httpx.AsyncClient, query: str, **body: Any) -> list[str]:
    return [hit["external_id"] for hit in (await search(api, query, **body))["results"]]


# --- ranking per mode ----------------------------------------------------------------------


async def test_keyword_mode_finds_a_rare_exact_term(api: httpx.AsyncClient) -> None:
    await load(api)
    assert await ids(api, "zephyrine", mode="keyword") == ["lamp"]
    # Porter stemming: "refunds" finds "refund".
    assert (await ids(api, "refunds", mode="keyword"))[0] == "refund"


async def test_semantic_mode_finds_a_paraphrase_without_shared_words(
    api: httpx.AsyncClient,
) -> None:
    await load(api)
    query = "where do cats like to nap"
    assert await ids(api, query, mode="keyword") == []
    assert (await ids(api, query, mode="semantic"))[0] == "felines"
    assert (await ids(api, "hot molten rock from a volcano", mode="semantic"))[0] == "volcano"


async def test_hybrid_mode_returns_both_keyword_and_semantic_matches(
    api: httpx.AsyncClient,
) -> None:
    await load(api)
    query = "Zephyrine, or where do cats like to nap"
    assert (await ids(api, query, mode="keyword"))[0] == "lamp"
    assert "felines" not in await ids(api, query, mode="keyword")
    hybrid = await ids(api, query)
    assert set(hybrid[:2]) == {"lamp", "felines"}


async def test_response_shape_and_scores(api: httpx.AsyncClient) -> None:
    await load(api)
    for mode in MODES:
        body = await search(api, "desk lamp usb port", mode=mode, k=3)
        assert body["mode"] == mode
        assert isinstance(body["took_ms"], float | int) and body["took_ms"] >= 0
        assert 1 <= len(body["results"]) <= 3
        top = body["results"][0]
        assert top == {
            "external_id": "lamp",
            "title": "Desk lamp",
            "score": top["score"],
            "semantic_score": top["semantic_score"],
            "keyword_score": top["keyword_score"],
            "chunk_index": 0,
            "text": CORPUS[0]["content"],
            "metadata": {"kind": "product", "stock": 3, "lang": "en"},
        }
        scores = [hit["score"] for hit in body["results"]]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)
        for hit in body["results"]:
            parts = (hit["semantic_score"], hit["keyword_score"])
            assert all(p is None or 0.0 <= p <= 1.0 for p in parts)
            if mode == "semantic":
                assert parts == (hit["score"], None)
            elif mode == "keyword":
                assert parts == (None, hit["score"])
        if mode == "hybrid":  # the lamp matches both ways
            assert top["semantic_score"] is not None and top["keyword_score"] is not None
    assert (await search(api, "lamp"))["mode"] == "hybrid"  # the default


TECHNICAL = [
    {
        "external_id": "boundary-layer",
        "title": "Boundary layer transition",
        "content": "Laminar boundary layers on a flat plate become turbulent when the Reynolds "
        "number passes a critical value; surface roughness moves transition upstream.",
    },
    {
        "external_id": "shock-waves",
        "title": "Shock waves in supersonic flow",
        "content": "A normal shock wave forms ahead of a blunt body in supersonic flow; the "
        "pressure and temperature rise sharply across it while the Mach number falls.",
    },
    {
        "external_id": "wal",
        "title": "Write-ahead logging",
        "content": "A database with write-ahead logging appends every change to the log and "
        "flushes it before the data pages, so a crash can be recovered by replaying the log.",
    },
    {
        "external_id": "btree",
        "title": "B-tree indexes",
        "content": "A B-tree index keeps keys sorted in balanced pages, so lookups and range "
        "scans read a logarithmic number of pages.",
    },
    {
        "external_id": "tls",
        "title": "TLS handshake",
        "content": "In the TLS handshake the client and server agree on a cipher suite and "
        "derive session keys; the server proves its identity with a certificate.",
    },
]
#: (query, the document it asks for): real questions for the technical corpus.
ON_TOPIC = [
    ("when does a laminar boundary layer turn turbulent", "boundary-layer"),
    ("pressure rise across a normal shock in supersonic flow", "shock-waves"),
    ("how does a database recover after a crash", "wal"),
    ("range scan on a sorted index", "btree"),
    ("how do client and server agree on session keys", "tls"),
]
OFF_TOPIC = [
    "chocolate cake recipe",
    "best pizza in naples",
    "how to knit a wool scarf",
    "football world cup final",
]


@pytest.mark.parametrize("mode", ["hybrid", "semantic"])
async def test_the_junk_threshold_separates_hits_from_junk(
    api: httpx.AsyncClient, mode: str
) -> None:
    """One threshold for every query: the right document of each real question scores above
    it, anything an off-topic query finds below it (API docs: the junk threshold)."""
    await load(api, TECHNICAL)
    threshold = SEARCH_JUNK_THRESHOLD
    for query, expected in ON_TOPIC:
        top = (await search(api, query, mode=mode, k=1))["results"][0]
        assert top["external_id"] == expected
        assert top["score"] >= threshold, (query, top["score"])
        kept = await ids(api, query, mode=mode, min_score=threshold)
        assert expected in kept
    for query in OFF_TOPIC:
        body = await search(api, query, mode=mode, k=5)
        assert len(body["results"]) == 5  # something is always found ...
        assert all(hit["score"] < threshold for hit in body["results"]), (query, body)
        # ... and the threshold leaves it all out.
        assert await ids(api, query, mode=mode, min_score=threshold) == []


@pytest.mark.parametrize("mode", MODES)
async def test_min_score_leaves_out_weaker_hits(api: httpx.AsyncClient, mode: str) -> None:
    await load(api)
    every = (await search(api, "lamp orders refund", mode=mode, k=5))["results"]
    scores = [h["score"] for h in every]
    # The first hit scoring below the best (hits may tie: one matched word each).
    lower = next((i for i, s in enumerate(scores) if s < scores[0]), None)
    assert lower is not None, scores
    cut = (scores[0] + scores[lower]) / 2
    kept = (await search(api, "lamp orders refund", mode=mode, k=5, min_score=cut))["results"]
    assert kept == every[:lower]
    assert (await search(api, "lamp", mode=mode, min_score=1))["results"] == []


async def test_empty_account_finds_nothing(api: httpx.AsyncClient) -> None:
    for mode in MODES:
        assert (await search(api, "anything", mode=mode))["results"] == []


# --- documents and chunks ------------------------------------------------------------------


def _long_document(topic: str, n: int) -> str:
    return " ".join(
        f"Paragraph {i} explains how the {topic} works in situation {i}." for i in range(n)
    )


async def test_at_most_one_hit_per_document_and_k_respected(api: httpx.AsyncClient) -> None:
    items = [
        {"external_id": f"long-{j}", "content": _long_document(f"turbine model {j}", 80)}
        for j in range(3)
    ]
    await load(api, [*CORPUS, *items])
    doc = (await api.get(f"{DOCS}/by-external-id/long-0")).json()
    assert doc["chunk_count"] >= 5
    for mode in MODES:
        for k in (1, 2, 5, 50):
            found = await ids(api, "how the turbine model works", mode=mode, k=k)
            assert len(found) == len(set(found)), found
            assert len(found) <= k
            if k <= 3:
                assert len(found) == k and set(found) <= {"long-0", "long-1", "long-2"}
    everything = await ids(api, "how the turbine works", mode="semantic", k=50)
    assert sorted(everything) == sorted(i["external_id"] for i in [*CORPUS, *items])


async def test_the_hit_shows_the_documents_best_chunk(api: httpx.AsyncClient) -> None:
    filler = _long_document("pump", 60)
    content = f"{filler} Finally, the quetzalcoatlus bracket holds the pump in place."
    await load(api, [{"external_id": "manual", "content": content}])
    for mode in MODES:
        (hit,) = (await search(api, "quetzalcoatlus bracket", mode=mode, k=1))["results"]
        assert hit["external_id"] == "manual"
        assert hit["chunk_index"] > 0
        assert "quetzalcoatlus" in hit["text"]


async def test_deleted_documents_are_never_returned(api: httpx.AsyncClient) -> None:
    await load(api)
    assert "lamp" in await ids(api, "Zephyrine desk lamp", mode="keyword")
    assert (await api.delete(f"{DOCS}/by-external-id/lamp")).status_code == 204
    for mode in MODES:
        assert "lamp" not in await ids(api, "Zephyrine desk lamp", mode=mode, k=50)
        assert "lamp" not in await ids(api, "Zephyrine", mode=mode, external_ids=["lamp"])


async def test_after_an_update_the_old_text_is_not_found(api: httpx.AsyncClient) -> None:
    await load(api)
    r = await api.put(
        f"{DOCS}/by-external-id/lamp",
        json={"content": "The Aurelian floor heater warms a room in minutes.", "title": "Heater"},
    )
    assert r.status_code == 200
    assert await ids(api, "Zephyrine", mode="keyword") == []
    assert (await ids(api, "Aurelian", mode="keyword")) == ["lamp"]
    for mode in MODES:
        hits = (await search(api, "floor heater warms a room", mode=mode))["results"]
        assert hits[0]["external_id"] == "lamp"
        assert hits[0]["title"] == "Heater"
        assert "Aurelian" in hits[0]["text"]
        assert all("Zephyrine" not in hit["text"] for hit in hits)


async def test_a_title_change_is_searchable_by_keyword(api: httpx.AsyncClient) -> None:
    await load(api)
    body = {**CORPUS[1], "title": "Mercurial dispatch"}
    body.pop("external_id")
    assert (await api.put(f"{DOCS}/by-external-id/shipping", json=body)).status_code == 200
    assert await ids(api, "mercurial", mode="keyword") == ["shipping"]
    assert (await search(api, "mercurial", mode="keyword"))["results"][0]["title"] == (
        "Mercurial dispatch"
    )


async def test_a_failed_batch_leaves_no_trace_in_search(make_app: AppFactory) -> None:
    tiny = plan_config(
        "tiny",
        knowledge_docs=2,
        knowledge_chars=10_000,
        personas=1,
        reads_per_minute=1_000,
        writes_per_minute=1_000,
        searches_per_minute=1_000,
    )
    app = await make_app(plans={"tiny": tiny})
    key = await new_key(app, plan="tiny")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        # The quota check runs in the write transaction, after the texts were embedded.
        r = await api.put(DOCS, json={"items": CORPUS[:3]})
        assert_problem(r, 403, "knowledge.quota_exceeded")
        for mode in MODES:
            assert await ids(api, "Zephyrine desk lamp", mode=mode) == []
        await load(api, CORPUS[1:3])
        for mode in MODES:
            assert "lamp" not in await ids(api, "Zephyrine desk lamp", mode=mode, k=50)


async def test_other_users_documents_are_never_returned(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    await load(api)
    other_key = await new_key(app, email="other@example.com", plan="unlimited")
    async with client_for(app, **{"X-Api-Key": other_key}) as other:
        await load(other, [{"external_id": "mine", "content": "Zephyrine grows in my garden."}])
        for mode in MODES:
            found = await ids(other, "Zephyrine desk lamp", mode=mode, k=50)
            assert found == ["mine"]
    assert "mine" not in await ids(api, "Zephyrine garden", k=50)
    # The keyword index's per-user `owner` tokens are not searchable text.
    for token in ("u1", "u2", "u3", "owner"):
        assert await ids(api, token, mode="keyword") == []


# --- scopes --------------------------------------------------------------------------------


async def _persona(api: httpx.AsyncClient, external_ids: list[str]) -> str:
    r = await api.post("/api/personas", json={"name": "Helper"})
    assert r.status_code == 201, r.text
    persona_id: str = r.json()["id"]
    r = await api.put(f"/api/personas/{persona_id}/knowledge", json={"external_ids": external_ids})
    assert r.status_code == 200, r.text
    return persona_id


async def test_persona_scope_gets_its_own_best_documents(api: httpx.AsyncClient) -> None:
    # Many documents outside the persona match the query better than the persona's own.
    outside = [
        {
            "external_id": f"lamp-{i}",
            "content": f"Zephyrine desk lamp number {i} with a USB-C port.",
        }
        for i in range(40)
    ]
    await load(api, [*CORPUS, *outside])
    persona_id = await _persona(api, ["shipping", "refund", "volcano"])
    for mode in MODES:
        found = await ids(api, "Zephyrine desk lamp USB-C", mode=mode, k=5, persona_id=persona_id)
        assert len(found) == len(set(found))
        assert set(found) <= {"shipping", "refund", "volcano"}
        if mode != "keyword":  # keyword mode finds only the documents sharing a word
            assert sorted(found) == ["refund", "shipping", "volcano"]
    assert await ids(
        api, "return an item for my money back", mode="semantic", k=1, persona_id=persona_id
    ) == ["refund"]
    empty = await _persona(api, [])
    for mode in MODES:
        assert await ids(api, "lamp", mode=mode, persona_id=empty) == []


async def test_unknown_or_foreign_persona_is_404(app: Starlette, api: httpx.AsyncClient) -> None:
    await load(api)
    r = await api.post(SEARCH, json={"query": "lamp", "persona_id": "per_01NOSUCHPERSONA000000000"})
    assert_problem(r, 404, "persona.not_found")
    other_key = await new_key(app, email="other@example.com", plan="unlimited")
    async with client_for(app, **{"X-Api-Key": other_key}) as other:
        r = await other.post("/api/personas", json={"name": "Theirs"})
        foreign = r.json()["id"]
    r = await api.post(SEARCH, json={"query": "lamp", "persona_id": foreign, "mode": "keyword"})
    assert_problem(r, 404, "persona.not_found")


async def test_external_ids_scope(api: httpx.AsyncClient) -> None:
    await load(api)
    for mode in MODES:
        found = await ids(api, "Zephyrine desk lamp", mode=mode, external_ids=["refund", "volcano"])
        assert set(found) <= {"refund", "volcano"}
        assert "lamp" not in found
        assert await ids(api, "lamp", mode=mode, external_ids=[]) == []
        assert await ids(api, "lamp", mode=mode, external_ids=["nope", "lamp"]) == ["lamp"]
    assert sorted(
        await ids(api, "anything at all", mode="semantic", external_ids=["refund", "volcano"])
    ) == [
        "refund",
        "volcano",
    ]


async def test_metadata_scope_is_typed_equality(api: httpx.AsyncClient) -> None:
    await load(api)
    q = "anything at all"

    async def scoped(metadata: dict[str, Any], mode: str = "semantic") -> list[str]:
        return sorted(await ids(api, q, mode=mode, k=50, metadata=metadata))

    assert await scoped({"kind": "policy"}) == ["refund", "shipping"]
    assert await scoped({"kind": "policy", "lang": "en"}) == ["shipping"]
    assert await scoped({"stock": 3}) == ["lamp"]
    assert await scoped({"stock": 3.0}) == ["lamp"]
    assert await scoped({"stock": "3"}) == []
    assert await scoped({"draft": True}) == ["felines"]
    assert await scoped({"draft": False}) == ["volcano"]
    assert await scoped({"draft": 1}) == []
    assert await scoped({"tags": ["geo", "science"]}) == ["volcano"]
    assert await scoped({"tags": ["science"]}) == []
    assert await scoped({"missing": None}) == []
    assert await scoped({"kind": "nope"}) == []
    assert await scoped({}) == sorted(d["external_id"] for d in CORPUS)
    assert await scoped({"kind": "policy"}, mode="keyword") == []  # no shared word
    assert await ids(api, "refund", mode="keyword", metadata={"kind": "policy"}) == ["refund"]


async def test_scopes_intersect(api: httpx.AsyncClient) -> None:
    await load(api)
    persona_id = await _persona(api, ["lamp", "shipping", "felines"])
    found = await ids(
        api,
        "anything",
        k=50,
        persona_id=persona_id,
        external_ids=["shipping", "felines", "refund"],
        metadata={"lang": "en"},
    )
    assert found == ["shipping"]


# --- validation and robustness ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"query": "x", "k": 0}, "/k"),
        ({"query": "x", "k": 51}, "/k"),
        ({"query": "x", "k": "many"}, "/k"),
        ({"query": "   "}, "/query"),
        ({"query": ""}, "/query"),
        ({"query": "x" * 1001}, "/query"),
        ({}, "/query"),
        ({"query": "x", "mode": "fuzzy"}, "/mode"),
        ({"query": "x", "metadata": ["kind"]}, "/metadata"),
        ({"query": "x", "metadata": {"n": 2**64}}, "/metadata"),
        ({"query": "x", "external_ids": "lamp"}, "/external_ids"),
        ({"query": "x", "external_ids": ["ok"] * 1001}, "/external_ids"),
        ({"query": "x", "persona_id": ""}, "/persona_id"),
    ],
)
async def test_validation_errors_are_422(
    api: httpx.AsyncClient, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(await api.post(SEARCH, json=body), 422, "request.validation_failed")
    assert [e["pointer"] for e in problem["errors"]] == [pointer]


async def test_a_bad_external_id_in_the_list_is_422(api: httpx.AsyncClient) -> None:
    r = await api.post(SEARCH, json={"query": "x", "external_ids": ["good", "bad id"]})
    problem = assert_problem(r, 422, "knowledge.invalid_external_id")
    assert problem["errors"][0]["pointer"] == "/external_ids/1"


NASTY = [
    '"',
    '"unbalanced',
    "lamp AND",
    "OR OR OR",
    "NOT lamp",
    "NEAR(lamp desk, 2)",
    "lamp*",
    "*",
    "^lamp",
    "title:lamp",
    "text : desk",
    "(lamp",
    "lamp)",
    "{title text}: lamp",
    "- + ~ ! @ # $ % & = ; , . / \\ |",
    "'; DROP TABLE chunks; --",
    "\x00 nul",
    "ünïcödé 日本語 🚀",
    "a" * 1000,
    " ".join(["lamp"] * 200),
    " ".join(f"w{i}" for i in range(220)),
]


@pytest.mark.parametrize("query", NASTY)
async def test_fts_syntax_in_a_query_never_fails(api: httpx.AsyncClient, query: str) -> None:
    await load(api, CORPUS[:2])
    for mode in MODES:
        r = await api.post(SEARCH, json={"query": query, "mode": mode})
        assert r.status_code == 200, r.text
    if "lamp" in query.lower():
        assert "lamp" in await ids(api, query, mode="keyword")


async def test_a_query_without_words_finds_nothing_by_keyword(api: httpx.AsyncClient) -> None:
    await load(api)
    assert await ids(api, "?!* ... ()", mode="keyword") == []
    assert len(await ids(api, "?!* ... ()", mode="semantic")) == 5


async def test_search_is_charged_to_the_search_policy(app: Starlette) -> None:
    key = await new_key(app, email="free@example.com", plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.post(SEARCH, json={"query": "lamp", "mode": "keyword"})
        assert r.status_code == 200
        assert r.headers["ratelimit-policy"] == '"search";q=60;w=60'


async def test_openapi_documents_the_operation(anon: httpx.AsyncClient) -> None:
    doc = (await anon.get("/openapi.json")).json()
    op = doc["paths"]["/api/knowledge/search"]["post"]
    assert op["x-ratelimit-policy"] == "search"
    assert op["x-idempotent"] is True
    for words in ("cosine similarity", "BM25", "semantic_score", "keyword_score", "min_score"):
        assert words in op["description"]
    assert f"Junk threshold: {SEARCH_JUNK_THRESHOLD:g}" in op["description"]
    assert "persona.not_found" in op["responses"]["404"]["x-error-codes"]
    assert "knowledge.invalid_external_id" in op["responses"]["422"]["x-error-codes"]
