"""Lists in GraphQL variables, refused from their length before graphql-core coerces them.

graphql-core coerces every variable, item by item and on the event loop, before any resolver
runs: a 240,000-item `upsertKnowledgeDocs` batch took 9 s to reach the resolver that refuses it.
So the lists the schema takes are bounded here, from `len()` alone, with the code and pointer
REST gives for the same list (REST refuses it the same way, in its request models). A list
written inline in the document is bounded by the token limit and checked by the resolvers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from graphql import GraphQLError, parse
from graphql.language import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)
from strawberry.http import GraphQLRequestData
from strawberry.types import ExecutionResult

from app.errors import AppError, BatchTooLarge, FieldError, ValidationFailed
from app.graphql.schema import MAX_TOKENS
from app.models import PERSONA_KNOWLEDGE_MAX, SEARCH_EXTERNAL_IDS_MAX
from app.services.runtime import Principal


@dataclass(frozen=True, slots=True)
class ListBound:
    """How long a list argument may be for a caller, and the error past it."""

    limit: Callable[[Principal], int]
    refuse: Callable[[str, int, int, Principal], AppError]


def _batch_too_large(argument: str, count: int, limit: int, principal: Principal) -> AppError:
    return BatchTooLarge(
        f"The batch has {count} items; the {principal.plan.id} plan allows {limit}.",
        errors=[FieldError(f"/{argument}", BatchTooLarge.code, f"at most {limit} items")],
    )


def _too_long(argument: str, count: int, limit: int, principal: Principal) -> AppError:
    message = f"at most {limit} items, not {count}"
    return ValidationFailed(
        f"{argument}: {message}.",
        errors=[FieldError(f"/{argument}", ValidationFailed.code, message)],
    )


#: (root field, argument) -> its bound: the plan's `batch_items`, or the request model's.
LIST_ARGUMENTS: dict[tuple[str, str], ListBound] = {
    ("upsertKnowledgeDocs", "items"): ListBound(
        lambda p: p.plan.limits.batch_items, _batch_too_large
    ),
    ("setPersonaKnowledge", "externalIds"): ListBound(lambda _: PERSONA_KNOWLEDGE_MAX, _too_long),
    ("search", "externalIds"): ListBound(lambda _: SEARCH_EXTERNAL_IDS_MAX, _too_long),
}


def refuse_long_lists(request: GraphQLRequestData, principal: Principal) -> ExecutionResult | None:
    """The result refusing the operation when a variable feeds a bounded list argument more
    items than its bound allows (as a field error at that root field, like the resolver's own
    refusal), else None."""
    variables = request.variables or {}
    if not request.query or not any(isinstance(v, list) for v in variables.values()):
        return None
    try:
        document = parse(request.query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return None  # execution reports it
    for field in _root_fields(document, request.operation_name):
        for argument in field.arguments or ():
            bound = LIST_ARGUMENTS.get((field.name.value, argument.name.value))
            if bound is None or not isinstance(argument.value, VariableNode):
                continue
            value = variables.get(argument.value.name.value)
            limit = bound.limit(principal)
            if isinstance(value, list) and len(value) > limit:
                exc = bound.refuse(argument.name.value, len(value), limit, principal)
                key = (field.alias or field.name).value
                error = GraphQLError(exc.detail, nodes=[field], path=[key], original_error=exc)
                return ExecutionResult(data=None, errors=[error])
    return None


def _root_fields(document: DocumentNode, operation_name: str | None) -> Iterator[FieldNode]:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1:
        return
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    seen: set[str] = set()

    def walk(selection_set: SelectionSetNode) -> Iterator[FieldNode]:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                yield selection
            elif isinstance(selection, InlineFragmentNode):
                yield from walk(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                seen.add(selection.name.value)  # once each, so cycles and fan-outs cost nothing
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    yield from walk(fragment.selection_set)

    yield from walk(operations[0].selection_set)
