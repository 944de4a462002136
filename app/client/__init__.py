"""A Python client for the PersonAIzer v1 API (sync and asyncio, on httpx).

    from app.client import Client

    with Client("http://127.0.0.1:8000", api_key) as api:
        api.upsert_docs_batched([{"external_id": "faq", "content": "Orders ship in two days."}])
        for doc in api.iter_docs():
            print(doc.external_id, doc.chunk_count)

Answers are typed (`app.client.models`); error answers raise `ApiError` with the contract's
`code`, `status` and `request_id`; 429 and 503 are retried after `Retry-After`.
"""

from app.client.async_client import AsyncClient
from app.client.batching import DEFAULT_BATCH_CHARS, BatchDone, plan_batches
from app.client.errors import (
    ApiError,
    ClientError,
    ConnectionFailed,
    RequestTimeout,
    TransportError,
)
from app.client.models import (
    BatchResult,
    Change,
    ChangesPage,
    DocInput,
    Document,
    Page,
    Persona,
    PersonaDocument,
    PersonaKnowledge,
    PersonaSummary,
    SearchHit,
    SearchResults,
    SingleUpsert,
    Subscription,
    Usage,
)
from app.client.retry import RetryEvent, RetryPolicy
from app.client.sync_client import Client

__all__ = [
    "DEFAULT_BATCH_CHARS",
    "ApiError",
    "AsyncClient",
    "BatchDone",
    "BatchResult",
    "Change",
    "ChangesPage",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "DocInput",
    "Document",
    "Page",
    "Persona",
    "PersonaDocument",
    "PersonaKnowledge",
    "PersonaSummary",
    "RequestTimeout",
    "RetryEvent",
    "RetryPolicy",
    "SearchHit",
    "SearchResults",
    "SingleUpsert",
    "Subscription",
    "TransportError",
    "Usage",
    "plan_batches",
]
