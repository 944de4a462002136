"""`personaizer serve --demo`: a demo user, a key, and sample knowledge to try the API with."""

from __future__ import annotations

import asyncio
import logging
import secrets

from rich.console import Console
from starlette.applications import Starlette

from app.db import Database
from app.errors import UserExists
from app.models import KnowledgeDocItem, PersonaCreate
from app.services import accounts, knowledge, personas
from app.services.core import Core

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


def install_demo(app: Starlette, console: Console) -> None:
    """Make the demo account now (so its key can be printed) and load samples once ready."""
    core: Core = app.state.core
    password = secrets.token_urlsafe(12)

    async def make_account() -> str:
        db = Database(core.settings)
        try:
            await db.migrate()
            boot = Core(settings=core.settings, db=db, embedder=core.embedder)
            try:
                await accounts.create_user(
                    core=boot, email=DEMO_EMAIL, plan_id="pro", password=password
                )
            except UserExists:
                await accounts.set_plan(core=boot, email=DEMO_EMAIL, plan_id="pro")
            return (await accounts.create_key(core=boot, email=DEMO_EMAIL, name="demo")).key
        finally:
            await db.dispose()

    key = asyncio.run(make_account())
    console.print(f"Demo user: {DEMO_EMAIL}  password: {password}")
    console.print(f"Demo API key: {key}")

    async def load_samples(core: Core) -> None:
        await core.embedder.wait_ready()
        principal = await accounts.authenticate(core=core, api_key=key)
        result = await knowledge.upsert_many(core=core, principal=principal, items=SAMPLE_DOCS)
        existing = await personas.list_personas(core=core, principal=principal, limit=200)
        names = {p.name for p in existing.items}
        for sample, external_ids in SAMPLE_PERSONAS:
            if sample.name in names:  # a restart with --demo keeps the earlier demo personas
                continue
            persona = await personas.create_persona(core=core, principal=principal, body=sample)
            await personas.set_knowledge(
                core=core, principal=principal, persona_id=persona.id, external_ids=external_ids
            )
        log.info("demo data loaded: %s", result.summary.model_dump())

    app.state.startup_hooks.append(load_samples)
