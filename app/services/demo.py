"""`personaizer serve --demo`: a demo user, a key, and sample knowledge to try the API with.

The CLI makes the account before the server starts (so it can print the key) and runs
`load_samples` once the server is up."""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from app.errors import Unauthorized, UserExists
from app.models import KnowledgeDocItem, PersonaCreate
from app.services import accounts, knowledge, personas
from app.services.runtime import Runtime

log = logging.getLogger(__name__)

DEMO_EMAIL = "demo@personaizer.local"

SAMPLE_DOCS = [
    KnowledgeDocItem(
        external_id="guide-reset-password",
        title="Resetting your password",
        content=(
            "To reset your password, open Settings, choose Security and press 'Reset password'. "
            "A link valid for 30 minutes is sent to your email address."
        ),
        metadata={"lang": "en", "kind": "guide"},
    ),
    KnowledgeDocItem(
        external_id="product-SKU-9821",
        title="Aurora desk lamp",
        content=(
            "The Aurora desk lamp has three colour temperatures (2700 K, 4000 K, 6500 K), a USB-C "
            "port for charging a phone, and a 5-year warranty."
        ),
        metadata={"lang": "en", "kind": "product"},
    ),
    KnowledgeDocItem(
        external_id="faq-shipping",
        title="Shipping times",
        content=(
            "Orders ship within two working days. Delivery inside the EU takes 3-5 days; "
            "elsewhere 7-14 days. Tracking links are emailed when the parcel leaves."
        ),
        metadata={"lang": "en", "kind": "faq"},
    ),
]


SAMPLE_PERSONAS = [
    (
        PersonaCreate(
            name="Ava",
            description="Support agent for the web shop.",
            instructions="You are Ava, a friendly support agent. Answer from the knowledge given.",
            greeting="Hi, I'm Ava. How can I help with your order?",
        ),
        ["faq-shipping", "guide-reset-password"],
    ),
    (
        PersonaCreate(
            name="Leo",
            description="Product expert.",
            instructions="You are Leo. Explain products precisely and briefly.",
        ),
        ["product-SKU-9821"],
    ),
]


#: Beside the database: the demo's password and key, so a restart can print them again (they
#: are stored hashed in the database and cannot be read back from it).
CREDENTIALS_FILE = "demo-credentials.json"


@dataclass(frozen=True, slots=True)
class DemoAccount:
    password: str
    key: str
    #: "created", "reused" (the saved credentials still work) or "reset".
    how: str


def _load_saved(path: Path) -> tuple[str, str] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return str(saved["password"]), str(saved["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, password: str, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only, like the database beside it; written whole, then moved into place.
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"email": DEMO_EMAIL, "password": password, "key": key}, f)
    tmp.replace(path)


async def _still_work(runtime: Runtime, password: str, key: str) -> bool:
    try:
        await accounts.login(runtime=runtime, email=DEMO_EMAIL, password=password)
        await accounts.authenticate(runtime=runtime, api_key=key)
    except Unauthorized:
        return False
    return True


async def ensure_demo_account(runtime: Runtime, saved_at: Path) -> DemoAccount:
    """The demo user on the pro plan with a password and a key that work.

    On a restart the saved credentials are reused when they still work; otherwise (the file
    was removed, the key disabled) the password is reset and the demo keys are replaced by one
    new key, so keys do not pile up one per start."""
    password = secrets.token_urlsafe(12)
    try:
        await accounts.create_user(
            runtime=runtime, email=DEMO_EMAIL, plan_id="pro", password=password
        )
    except UserExists:
        await accounts.set_plan(runtime=runtime, email=DEMO_EMAIL, plan_id="pro")
    else:
        key = (await accounts.create_key(runtime=runtime, email=DEMO_EMAIL, name="demo")).key
        _save(saved_at, password, key)
        return DemoAccount(password, key, "created")
    saved = _load_saved(saved_at)
    if saved is not None and await _still_work(runtime, *saved):
        return DemoAccount(*saved, "reused")
    await accounts.set_password(runtime=runtime, email=DEMO_EMAIL, password=password)
    for old in await accounts.list_keys(runtime=runtime, email=DEMO_EMAIL):
        if old.name == "demo":
            await accounts.delete_key(runtime=runtime, prefix=old.prefix, email=DEMO_EMAIL)
    key = (await accounts.create_key(runtime=runtime, email=DEMO_EMAIL, name="demo")).key
    _save(saved_at, password, key)
    return DemoAccount(password, key, "reset")


async def load_samples(runtime: Runtime, *, key: str) -> None:
    """The sample documents and personas, for the demo user whose API key is `key`: run once the
    server is up, as it waits for the model. A restart with --demo loads them again (unchanged
    documents are no-ops) and keeps the personas made earlier."""
    await runtime.embedder.wait_ready()
    principal = await accounts.authenticate(runtime=runtime, api_key=key)
    result = await knowledge.upsert_many(runtime=runtime, principal=principal, items=SAMPLE_DOCS)
    existing = await personas.list_personas(runtime=runtime, principal=principal, limit=200)
    names = {p.name for p in existing.items}
    for sample, external_ids in SAMPLE_PERSONAS:
        if sample.name in names:
            continue
        persona = await personas.create_persona(runtime=runtime, principal=principal, body=sample)
        await personas.set_knowledge(
            runtime=runtime, principal=principal, persona_id=persona.id, external_ids=external_ids
        )
    log.info("demo data loaded: %s", result.summary.model_dump())
