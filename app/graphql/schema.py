"""The schema: one Query and one Mutation over the area modules, with the abuse guards.

`schema.graphql` at the repository root is this schema printed (`personaizer export-schema`);
a test fails when the two differ.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaxTokensLimiter
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from app.graphql import knowledge as knowledge_types
from app.graphql import personas as persona_types
from app.graphql import search as search_types
from app.graphql import subscription as subscription_types
from app.graphql.document_limits import DocumentGuards
from app.graphql.errors import is_unexpected
from app.graphql.scalars import SCALARS
from app.graphql.scopes import NeedsScope

log = logging.getLogger(__name__)

#: Tokens per document. Send large inputs (batch upserts) as variables: a variable's value is
#: not a token; the body limit bounds it.
MAX_TOKENS = 5000


def _query(resolver: Callable[..., Any]) -> Any:
    # The resolver's docstring is the field's description in the SDL; every root field checks
    # the key scope `app.graphql.scopes.FIELD_SCOPES` gives it before it runs.
    return strawberry.field(
        resolver=resolver, description=inspect.getdoc(resolver), extensions=[NeedsScope()]
    )


def _mutation(resolver: Callable[..., Any]) -> Any:
    return strawberry.mutation(
        resolver=resolver, description=inspect.getdoc(resolver), extensions=[NeedsScope()]
    )


@strawberry.type
class Query:
    viewer: subscription_types.Viewer = _query(subscription_types.viewer)
    knowledge_docs: knowledge_types.KnowledgeDocPage = _query(knowledge_types.knowledge_docs)
    knowledge_doc: knowledge_types.KnowledgeDocType = _query(knowledge_types.knowledge_doc)
    knowledge_changes: knowledge_types.KnowledgeChangesPage = _query(
        knowledge_types.knowledge_changes
    )
    personas: persona_types.PersonaPage = _query(persona_types.list_personas)
    persona: persona_types.PersonaType = _query(persona_types.persona)
    plan: subscription_types.SubscriptionInfo = _query(subscription_types.plan)
    usage: subscription_types.Usage = _query(subscription_types.usage)
    search: search_types.SearchResult = _query(search_types.search)


@strawberry.type
class Mutation:
    upsert_knowledge_docs: knowledge_types.UpsertKnowledgeDocsPayload = _mutation(
        knowledge_types.upsert_knowledge_docs
    )
    upsert_knowledge_doc: knowledge_types.UpsertKnowledgeDocPayload = _mutation(
        knowledge_types.upsert_knowledge_doc
    )
    delete_knowledge_doc: knowledge_types.DeleteKnowledgeDocPayload = _mutation(
        knowledge_types.delete_knowledge_doc
    )
    create_persona: persona_types.PersonaType = _mutation(persona_types.create_persona)
    update_persona: persona_types.PersonaType = _mutation(persona_types.update_persona)
    delete_persona: persona_types.DeletePersonaPayload = _mutation(persona_types.delete_persona)
    set_persona_knowledge: persona_types.PersonaKnowledgeResult = _mutation(
        persona_types.set_persona_knowledge
    )


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Domain errors and invalid documents are answers, not incidents: log only the bugs.
        for error in errors:
            if is_unexpected(error):
                log.error(
                    "GraphQL resolver failed: %s", error.message, exc_info=error.original_error
                )


def _extensions() -> list[Any]:
    # Factories, not instances: Strawberry makes fresh ones per operation, so no state is
    # shared between requests. The token limit bounds the parse; the depth, alias and cost
    # guards then measure the parsed document in one pass (app/graphql/document_limits.py).
    return [
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        DocumentGuards,
    ]


schema = Schema(
    query=Query,
    mutation=Mutation,
    extensions=_extensions(),
    config=StrawberryConfig(scalar_map=SCALARS),
)
