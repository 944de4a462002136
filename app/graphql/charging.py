"""What a GraphQL request is charged: the rate-limit policy of its operation and the units.

Charged before validation and execution (API.md section 3's order), from the document alone: a
mutation costs one `writes` unit per root field (each is a REST write of its own), a query one
`search` unit per `search` field at its root (each is a REST search of its own), and any other
query one `reads` unit. Root fields are counted as execution merges them: once per response key
(alias or name), through inline fragments and fragment spreads, each fragment once; one that
`@skip`/`@include` certainly leaves out is not charged (app/graphql/directives.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from graphql import GraphQLError, OperationType, parse
from graphql.language import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
)

from app.graphql.directives import Possible, is_left_out, possible_values
from app.graphql.schema import MAX_TOKENS
from app.graphql.search import SEARCH_FIELD
from app.http.ratelimit import Policy


@dataclass(frozen=True, slots=True)
class OperationKind:
    """What the rate limiter needs to know of a request's operation."""

    operation: OperationType | None
    policy: Policy
    #: Units charged: one per root field of a mutation, one per `search` field of a query that
    #: selects any (aliasing thirty searches into one operation costs thirty), else one.
    cost: int = 1


def classify(
    query: str | None,
    operation_name: str | None,
    variables: Mapping[str, object] | None = None,
) -> OperationKind:
    """The operation a request will execute and what it is charged. A document that does not
    parse or does not name one operation is charged as `reads`; execution then reports what is
    wrong with it. `variables` decide the `@skip`/`@include` conditions that name them."""
    if not query:
        return OperationKind(None, "reads")
    try:
        # The same token limit as execution, so this parse costs no more than that one.
        document = parse(query, no_location=True, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return OperationKind(None, "reads")
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1:
        return OperationKind(None, "reads")
    operation = operations[0]
    possible = possible_values([operation], variables if isinstance(variables, Mapping) else {})
    fields = root_fields(document, operation, possible)
    if operation.operation is OperationType.MUTATION:
        writes = sum(1 for name in fields.values() if name != "__typename")
        return OperationKind(operation.operation, "writes", max(1, writes))
    searches = sum(1 for name in fields.values() if name == SEARCH_FIELD)
    if searches:
        return OperationKind(operation.operation, "search", searches)
    return OperationKind(operation.operation, "reads")


def root_fields(
    document: DocumentNode, operation: OperationDefinitionNode, possible: Possible
) -> dict[str, str]:
    """The operation's root fields as execution collects them: response key -> field name.
    A selection `@skip`/`@include` certainly leaves out is not there (`possible`: each
    variable's possible values). Each fragment is read once however often it is spread, and a
    cycle ends there."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    fields: dict[str, str] = {}
    seen: set[str] = set()
    stack = [operation.selection_set]
    while stack:
        for selection in stack.pop().selections:
            if is_left_out(selection, possible):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                stack.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in seen and name in fragments:
                    seen.add(name)
                    stack.append(fragments[name].selection_set)
    return fields
