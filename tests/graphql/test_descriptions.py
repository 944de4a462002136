"""The schema's descriptions state the limits the models define, read from their constants: each
description below must carry the constant's current value, so changing nothing but the constant
changes what a client reads (and `schema.graphql`, checked by test_schema_file.py)."""

from __future__ import annotations

import re

import pytest
from graphql import GraphQLInputObjectType, GraphQLObjectType, build_schema
from pydantic import TypeAdapter, ValidationError

from app.graphql.descriptions import EXTERNAL_ID_MAX, size
from app.graphql.schema import schema
from app.models import (
    METADATA_MAX_BYTES,
    PERSONA_DESCRIPTION_MAX,
    PERSONA_GREETING_MAX,
    PERSONA_INSTRUCTIONS_MAX,
    PERSONA_KNOWLEDGE_MAX,
    PERSONA_NAME_MAX,
    SEARCH_EXTERNAL_IDS_MAX,
    SEARCH_K_MAX,
    SEARCH_METADATA_KEYS_MAX,
    SEARCH_QUERY_MAX,
    TITLE_MAX,
    ExternalId,
)
from app.models.pagination import MAX_LIMIT

SDL = build_schema(schema.as_str())


def description(type_name: str, field: str, argument: str | None = None) -> str:
    """The description of an input field (`argument` None) or of a field's argument."""
    graphql_type = SDL.type_map[type_name]
    if argument is None:
        assert isinstance(graphql_type, GraphQLInputObjectType)
        text = graphql_type.fields[field].description
    else:
        assert isinstance(graphql_type, GraphQLObjectType)
        text = graphql_type.fields[field].args[argument].description
    assert text is not None, (type_name, field, argument)
    return text


def states(text: str, value: str) -> bool:
    """Whether `text` gives `value` as a whole number (200 is not stated by 2000)."""
    return re.search(rf"(?<![\d,]){re.escape(value)}(?![\d,])", text) is not None


METADATA_SIZE = size(METADATA_MAX_BYTES)

WIRED = [
    # Pages.
    ("Query", "knowledgeDocs", "first", MAX_LIMIT),
    ("Query", "personas", "first", MAX_LIMIT),
    ("Persona", "knowledge", "first", MAX_LIMIT),
    # Documents.
    ("KnowledgeDocItemInput", "externalId", None, EXTERNAL_ID_MAX),
    ("KnowledgeDocItemInput", "title", None, TITLE_MAX),
    ("KnowledgeDocInput", "title", None, TITLE_MAX),
    ("KnowledgeDocItemInput", "metadata", None, METADATA_SIZE),
    ("KnowledgeDocInput", "metadata", None, METADATA_SIZE),
    # Personas.
    ("PersonaCreateInput", "name", None, PERSONA_NAME_MAX),
    ("PersonaUpdateInput", "name", None, PERSONA_NAME_MAX),
    ("PersonaCreateInput", "description", None, PERSONA_DESCRIPTION_MAX),
    ("PersonaUpdateInput", "description", None, PERSONA_DESCRIPTION_MAX),
    ("PersonaCreateInput", "instructions", None, PERSONA_INSTRUCTIONS_MAX),
    ("PersonaUpdateInput", "instructions", None, PERSONA_INSTRUCTIONS_MAX),
    ("PersonaCreateInput", "greeting", None, PERSONA_GREETING_MAX),
    ("PersonaUpdateInput", "greeting", None, PERSONA_GREETING_MAX),
    ("PersonaCreateInput", "metadata", None, METADATA_SIZE),
    ("PersonaUpdateInput", "metadata", None, METADATA_SIZE),
    ("Mutation", "setPersonaKnowledge", "externalIds", PERSONA_KNOWLEDGE_MAX),
    # Search.
    ("Query", "search", "query", SEARCH_QUERY_MAX),
    ("Query", "search", "k", SEARCH_K_MAX),
    ("Query", "search", "externalIds", SEARCH_EXTERNAL_IDS_MAX),
    ("Query", "search", "metadata", SEARCH_METADATA_KEYS_MAX),
]


@pytest.mark.parametrize(
    ("type_name", "field", "argument", "limit"),
    WIRED,
    ids=[f"{t}.{f}" + (f"({a})" if a else "") for t, f, a, _ in WIRED],
)
def test_description_states_the_models_limit(
    type_name: str, field: str, argument: str | None, limit: int | str
) -> None:
    text = description(type_name, field, argument)
    assert states(text, str(limit)), f"{type_name}.{field} {argument or ''}: {text!r}"


def test_the_external_id_length_is_the_models() -> None:
    # The models state it only in ExternalId's pattern and JSON schema; this is what they check.
    adapter = TypeAdapter(ExternalId)
    adapter.validate_python("a" * EXTERNAL_ID_MAX)
    with pytest.raises(ValidationError):
        adapter.validate_python("a" * (EXTERNAL_ID_MAX + 1))


@pytest.mark.parametrize(
    ("n_bytes", "text"), [(8 * 1024, "8 KiB"), (1024, "1 KiB"), (10_000, "10,000 bytes")]
)
def test_size_reads_as_written(n_bytes: int, text: str) -> None:
    assert size(n_bytes) == text
