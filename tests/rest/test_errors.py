"""The edges every route shares: auth, problem+json, request ids, body rules, docs, health."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.embedding.embedder import Model
from app.main import create_app
from app.services import accounts
from app.settings import Settings
from tests.conftest import assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"


async def test_every_auth_failure_is_the_same_401(app: Starlette, anon: httpx.AsyncClient) -> None:
    key = await new_key(app, email="k@example.com")
    disabled = await new_key(app, email="k@example.com")
    await accounts.disable_key(runtime=app.state.runtime, prefix=disabled[:12])
    candidates: list[dict[str, str]] = [
        {},
        {"X-Api-Key": ""},
        {"X-Api-Key": "nonsense"},
        {"X-Api-Key": "pa_live_" + "x" * 31},
        {"X-Api-Key": "pa_live_" + "A" * 40},  # well-formed, unknown
        {"X-Api-Key": key[:-1] + ("a" if key[-1] != "a" else "b")},
        {"X-Api-Key": disabled},
    ]
    bodies = []
    for headers in candidates:
        r = await anon.get(DOCS, headers=headers)
        body = assert_problem(r, 401, "auth.unauthorized")
        assert "ratelimit" not in r.headers
        body.pop("request_id")
        bodies.append(body)
    assert all(b == bodies[0] for b in bodies)
    ok = await anon.get(DOCS, headers={"X-Api-Key": key})
    assert ok.status_code == 200


async def test_auth_comes_before_validation(anon: httpx.AsyncClient) -> None:
    r = await anon.put(DOCS, content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(r, 401, "auth.unauthorized")


async def test_last_used_at_is_recorded(app: Starlette, api: httpx.AsyncClient) -> None:
    keys = await accounts.list_keys(runtime=app.state.runtime, email="owner@example.com")
    assert keys[0].last_used_at is None
    await api.get(DOCS)
    keys = await accounts.list_keys(runtime=app.state.runtime, email="owner@example.com")
    assert keys[0].last_used_at is not None


async def test_request_id_is_echoed_or_assigned(api: httpx.AsyncClient) -> None:
    r = await api.get(DOCS, headers={"X-Request-Id": "client-id.1:2_3-4"})
    assert r.headers["x-request-id"] == "client-id.1:2_3-4"
    for bad in ("has space", "x" * 129, "é"):
        r = await api.get("/nowhere", headers={"X-Request-Id": bad.encode()})
        rid = r.headers["x-request-id"]
        assert rid != bad and len(rid) == 32
        assert r.json()["request_id"] == rid
    r1, r2 = await api.get(DOCS), await api.get(DOCS)
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


async def test_request_id_in_every_log_line(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from app.http.logs import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level("INFO")
    await api.get(DOCS, headers={"X-Request-Id": "trace-me"})
    mine = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-me"]
    assert any("GET /api/knowledge/docs 200" in r.getMessage() for r in mine)


async def test_routing_errors_are_problems(anon: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    assert_problem(await anon.get("/no/such/route"), 404, "request.not_found")
    r = await api.post(DOCS, json={})
    assert_problem(r, 405, "request.method_not_allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT"}
    r = await api.patch("/api/knowledge/docs/by-external-id/a", json={})
    assert_problem(r, 405, "request.method_not_allowed")
    assert {"GET", "PUT", "DELETE"} <= set(r.headers["allow"].replace(" ", "").split(","))


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{bad", {"content-type": "application/json"}, 400, "request.malformed_json"),
        (b"\xff\xfe{}", {"content-type": "application/json"}, 400, "request.malformed_json"),
        (b'{"items": NaN}', {"content-type": "application/json"}, 400, "request.malformed_json"),
        (b"", {"content-type": "application/json"}, 400, "request.malformed_json"),
        (b'{"items": []}', {"content-type": "text/plain"}, 415, "request.unsupported_media_type"),
        (b'{"items": []}', {}, 415, "request.unsupported_media_type"),
        (b"[1, 2]", {"content-type": "application/json"}, 422, "request.validation_failed"),
    ],
)
async def test_body_rules(
    api: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    r = await api.put(DOCS, content=content, headers=headers)
    assert_problem(r, status, code)


async def test_json_with_charset_is_accepted(api: httpx.AsyncClient) -> None:
    body = json.dumps({"items": [{"external_id": "a", "content": "x"}]}).encode()
    r = await api.put(
        DOCS, content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200


async def test_body_limit_is_enforced_while_reading(make_app: Any) -> None:
    app = await make_app(max_body_bytes=4096)
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        big = json.dumps({"items": [{"external_id": "a", "content": "x" * 5000}]}).encode()
        assert_problem(
            await api.put(DOCS, content=big, headers={"content-type": "application/json"}),
            413,
            "request.too_large",
        )

        async def stream() -> Any:  # no Content-Length: the limit must hold while reading
            for _ in range(10):
                yield b" " * 1000

        r = await api.put(DOCS, content=stream(), headers={"content-type": "application/json"})
        assert_problem(r, 413, "request.too_large")
        assert (await api.get(DOCS)).json()["total"] == 0


async def test_unknown_fields_are_ignored(api: httpx.AsyncClient) -> None:
    r = await api.put(
        DOCS, json={"items": [{"external_id": "a", "content": "x", "colour": "red"}], "extra": 1}
    )
    assert r.status_code == 200


async def test_problem_types_are_described(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/problems/knowledge.invalid_external_id")
    assert r.status_code == 200
    assert r.json()["status"] == 422 and "A-Z" in r.json()["description"]
    codes = {p["code"] for p in (await anon.get("/problems")).json()["items"]}
    contract = {
        "auth.unauthorized",
        "auth.forbidden",
        "request.malformed_json",
        "request.invalid_cursor",
        "request.validation_failed",
        "request.unsupported_media_type",
        "request.too_large",
        "request.not_found",
        "request.method_not_allowed",
        "knowledge.invalid_external_id",
        "knowledge.duplicate_external_id",
        "knowledge.batch_too_large",
        "knowledge.content_too_large",
        "knowledge.not_found",
        "knowledge.unknown_external_ids",
        "knowledge.quota_exceeded",
        "knowledge.changes_expired",
        "persona.not_found",
        "persona.quota_exceeded",
        "limits.rate_exceeded",
        "server.unavailable",
        "server.internal_error",
    }
    assert contract <= codes
    assert_problem(await anon.get("/problems/no.such_code"), 404, "request.not_found")


async def test_a_bug_is_a_500_problem_without_internals(
    app: Starlette, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import knowledge

    async def broken(**_: Any) -> Any:
        raise RuntimeError("secret SELECT * FROM users")

    monkeypatch.setattr(knowledge, "get_doc", broken)
    r = await api.get(f"{DOCS}/by-external-id/a", headers={"X-Request-Id": "bug-1"})
    body = assert_problem(r, 500, "server.internal_error")
    assert body["request_id"] == "bug-1"
    assert "SELECT" not in r.text and "Traceback" not in r.text


async def test_openapi_document(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/openapi.json")
    spec = r.json()
    assert spec["openapi"].startswith("3.1")
    every = [op for methods in spec["paths"].values() for op in methods.values()]
    # The health probes are the only operations without a key (nor a rate limit).
    open_ops = {op["operationId"] for op in every if op.get("security") == []}
    assert open_ops == {"getLiveness", "getReadiness"}
    ops = [op for op in every if op["operationId"] not in open_ops]
    assert len(ops) >= 5
    for op in ops:
        assert op["x-ratelimit-policy"] in ("reads", "writes", "search")
        assert isinstance(op["x-idempotent"], bool)
        assert op["x-ratelimit-policy"] in op["description"]
        errors = {s: v for s, v in op["responses"].items() if int(s) >= 400}
        assert "401" in errors and "429" in errors
        for response in errors.values():
            assert response["x-error-codes"]
            assert all(code in response["description"] for code in response["x-error-codes"])
    put = spec["paths"]["/api/knowledge/docs/by-external-id/{external_id}"]["put"]
    assert {"200", "201", "422", "403"} <= set(put["responses"])
    item = spec["components"]["schemas"]["KnowledgeDocItem"]
    assert item["properties"]["external_id"]["maxLength"] == 128


async def test_docs_page_renders_offline(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "upsertKnowledgeDocs" in r.text
    assert "<script src" not in r.text and "https://" not in r.text


async def test_healthz_reports_the_embedder_until_it_loads(model: Model, tmp_path: Path) -> None:
    gate = threading.Event()

    def slow_loader() -> Model:
        gate.wait(timeout=30)
        return model

    app = create_app(Settings.for_tests(tmp_path / "d"), model=None, loader=slow_loader)
    async with app.router.lifespan_context(app), client_for(app) as client:
        r = await client.get("/healthz")
        body = assert_problem(r, 503, "server.unavailable")
        assert body["embedder"] == "loading" and body["database"] == "ok"
        assert int(r.headers["retry-after"]) >= 1
        key = await new_key(app)
        r = await client.put(
            f"{DOCS}/by-external-id/a", json={"content": "x"}, headers={"X-Api-Key": key}
        )
        assert_problem(r, 503, "server.unavailable")
        gate.set()
        await app.state.runtime.embedder.wait_ready()
        r = await client.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "database": "ok", "embedder": "ok"}


async def test_healthz_reports_a_failed_model(tmp_path: Path) -> None:
    def broken_loader() -> Model:
        raise OSError("model files missing")

    app = create_app(Settings.for_tests(tmp_path / "d"), model=None, loader=broken_loader)
    async with app.router.lifespan_context(app), client_for(app) as client:
        await app.state.runtime.embedder.wait_ready()
        body = assert_problem(await client.get("/healthz"), 503, "server.unavailable")
        assert body["embedder"] == "failed"


async def test_cors_is_off_by_default(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in r.headers


async def test_cors_for_configured_origins(make_app: Any) -> None:
    app = await make_app(cors_origins=["https://app.example.com"])
    key = await new_key(app)
    async with client_for(app) as client:
        pre = await client.options(
            DOCS,
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        r = await client.get(DOCS, headers={"Origin": "https://app.example.com", "X-Api-Key": key})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "ratelimit" in r.headers["access-control-expose-headers"].lower()
        other = await client.get(DOCS, headers={"Origin": "https://evil.example", "X-Api-Key": key})
        assert "access-control-allow-origin" not in other.headers
