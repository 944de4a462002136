"""The guards on a document's shape: depth, aliases and cost, checked before any of it runs.

`DocumentGuards` runs them on each operation before the specification's validation rules, which
walk the whole document too: a refused document does not pay for those.

A naive walk expands every fragment spread where it stands, so a document of under 1 KB whose
fragments each spread the next one twice takes 2^n steps to measure (20 levels held the event
loop for 6 s with Strawberry's depth and alias limiters). Here each fragment is measured once,
memoised by name in an order found without recursing through spreads, and a spread adds its
fragment's measure arithmetically: spread twice, it counts twice, as it would if expanded. A
fragment cycle (invalid GraphQL, reported by validation) adds nothing and cannot hang.

The cost of an operation counts every selected field once, and the selection of a field that
takes `first` (a page) or `k` (search hits) once per item it may return: the argument's value
(a literal or a variable), else its default. A value out of the argument's range counts once,
since the resolver refuses it (as REST does) before loading any item. A selection that
`@skip`/`@include` certainly leaves out costs nothing (app/graphql/directives.py). The counts
saturate at `SATURATED`, so hostile numbers stay small integers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from graphql import (
    BooleanValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SchemaMetaFieldDef,
    SelectionSetNode,
    TypeMetaFieldDef,
    TypeNameMetaFieldDef,
    ValueNode,
    VariableNode,
    get_named_type,
)
from graphql.language import DocumentNode
from strawberry.extensions import SchemaExtension

from app.errors import QueryTooCostly
from app.graphql.context import Context
from app.graphql.directives import boolean_literal, is_left_out, possible_values
from app.models import CHANGES_MAX_LIMIT, SEARCH_K_MAX
from app.models.pagination import MAX_LIMIT
from app.settings import Settings

#: Deepest selection allowed (introspection fields aside); the deepest useful one is 4 levels
#: (`personas { items { knowledge { items { ... } } } }`).
MAX_DEPTH = 10
#: Aliased fields per document: enough for a dashboard's few lookups, not for a fan-out.
MAX_ALIASES = 30
#: Arguments that say how many items a field returns, with the most the resolver accepts.
PAGE_ARGUMENTS: dict[str, int] = {"first": MAX_LIMIT, "k": SEARCH_K_MAX}
#: Fields whose `first` goes further than a list's: the changes feed takes up to 1000.
LARGER_PAGES: dict[str, int] = {"knowledgeChanges": CHANGES_MAX_LIMIT}
#: Where counts stop growing: far above any limit, far below numbers that are slow to multiply.
SATURATED = 10**15
#: Integer literals longer than this are beyond every maximum.
_MAX_DIGITS = 15


@dataclass(frozen=True, slots=True)
class Measure:
    """What the guards need of a selection: its cost, its depth (fields with a selection of
    their own, nested; introspection fields count 0, as Strawberry's depth limiter has it) and
    its aliased fields."""

    cost: int = 0
    depth: int = 0
    aliases: int = 0


_NOTHING = Measure()


def _saturate(n: int) -> int:
    return min(n, SATURATED)


class DocumentMeasure:
    """Measures the operations of one document; each fragment is measured once, on creation.

    `variables` are the request's variable values: a page size given as a variable counts with
    its value, else with the variable's default (the largest page, when several operations
    define it), else with the argument's default."""

    def __init__(
        self, schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any]
    ) -> None:
        self.schema = schema
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.operations = [
            d for d in document.definitions if isinstance(d, OperationDefinitionNode)
        ]
        # Each variable's possible values: the one sent, else every default the document gives
        # it (operations may differ; the largest page among them counts).
        self.variables = possible_values(self.operations, variables, literal=_literal)
        self.measures: dict[str, Measure] = {}
        for name in self._dependency_order():
            fragment = self.fragments[name]
            parent = self.schema.get_type(fragment.type_condition.name.value)
            self.measures[name] = self._selection_set(fragment.selection_set, parent)

    def operation(self, operation: OperationDefinitionNode) -> Measure:
        return self._selection_set(
            operation.selection_set, self.schema.get_root_type(operation.operation)
        )

    def _dependency_order(self) -> Iterator[str]:
        """Fragment names, each after every fragment it spreads: a depth-first walk with an
        explicit stack, as a chain of hundreds of fragments would pass Python's recursion
        limit. A spread back onto the path (a cycle) is not followed."""
        done: set[str] = set()
        for root in self.fragments:
            if root in done:
                continue
            path = [(root, iter(_spreads(self.fragments[root].selection_set)))]
            on_path = {root}
            while path:
                name, spreads = path[-1]
                for spread in spreads:
                    if spread in self.fragments and spread not in done and spread not in on_path:
                        path.append((spread, iter(_spreads(self.fragments[spread].selection_set))))
                        on_path.add(spread)
                        break
                else:
                    path.pop()
                    on_path.remove(name)
                    done.add(name)
                    yield name

    def _selection_set(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None
    ) -> Measure:
        # Recursion here follows the nesting within one definition only, which the parser
        # bounds (graphql-core refuses documents nested over 200 levels).
        cost = depth = aliases = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                measure = self._field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                measure = self._selection_set(selection.selection_set, inner)
            elif isinstance(selection, FragmentSpreadNode):
                # Unknown, or part of a cycle: validation reports it; it adds nothing here.
                measure = self.measures.get(selection.name.value, _NOTHING)
            else:  # pragma: no cover - the three kinds of selection are all there are
                continue
            if is_left_out(selection, self.variables):
                # Never executed, so it costs nothing; validation still walks it, so its depth
                # and aliases count.
                measure = replace(measure, cost=0)
            cost += measure.cost
            depth = max(depth, measure.depth)
            aliases += measure.aliases
        return Measure(_saturate(cost), depth, _saturate(aliases))

    def _field(self, node: FieldNode, parent: GraphQLNamedType | None) -> Measure:
        aliases = 1 if node.alias else 0
        if node.selection_set is None:
            return Measure(1, 0, aliases)
        definition = _field_definition(node.name.value, parent)
        inner = self._selection_set(
            node.selection_set, get_named_type(definition.type) if definition else None
        )
        depth = 0 if node.name.value.startswith("__") else 1 + inner.depth
        return Measure(
            _saturate(1 + self._items(node, definition) * inner.cost),
            depth,
            _saturate(aliases + inner.aliases),
        )

    def _items(self, node: FieldNode, definition: GraphQLField | None) -> int:
        """How many times the field's selection counts: its page size, or 1."""
        if definition is None:
            return 1
        for name, most in PAGE_ARGUMENTS.items():
            if name == "first":
                most = LARGER_PAGES.get(node.name.value, most)
            argument = definition.args.get(name)
            if argument is None:
                continue
            given = next((a.value for a in node.arguments or () if a.name.value == name), None)
            values: list[object] = [argument.default_value]
            if isinstance(given, VariableNode):
                values = self.variables.get(given.name.value) or values
            elif given is not None:
                values = [_int_literal(given)]
            return max(_page_size(value, most) for value in values)
        return 1


def _page_size(value: object, most: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # GraphQL's Int takes 50.0 for 50
    if not isinstance(value, int) or isinstance(value, bool):
        return 1  # not an integer: refused when the variables are coerced, before execution
    # Out of range, the resolver refuses the page (`request.validation_failed`, as REST does)
    # before loading any item: its selection never runs.
    return value if 1 <= value <= most else 1


def _literal(node: ValueNode) -> int | bool | None:
    """A variable's default as the guards read it: a page size or a directive's condition."""
    return boolean_literal(node) if isinstance(node, BooleanValueNode) else _int_literal(node)


def _int_literal(node: object) -> int | None:
    if not isinstance(node, IntValueNode):
        return None
    if len(node.value.lstrip("-")) > _MAX_DIGITS:
        return SATURATED  # out of every range; Python refuses `int()` of 4300+ digits anyway
    return int(node.value)


def _spreads(selection_set: SelectionSetNode) -> Iterator[str]:
    """The fragments spread anywhere in a selection set (not through other fragments)."""
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                yield selection.name.value
            elif (
                isinstance(selection, FieldNode | InlineFragmentNode)
                and selection.selection_set is not None
            ):
                stack.append(selection.selection_set)


def _field_definition(name: str, parent: GraphQLNamedType | None) -> GraphQLField | None:
    # The meta fields are in no type's `fields`; where they may stand is validation's concern.
    meta = {
        "__typename": TypeNameMetaFieldDef,
        "__schema": SchemaMetaFieldDef,
        "__type": TypeMetaFieldDef,
    }.get(name)
    if meta is not None:
        return meta
    if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
        field: GraphQLField | None = parent.fields.get(name)
        return field
    return None  # an unknown type or field: validation reports it


def guard_errors(
    schema: GraphQLSchema,
    document: DocumentNode,
    *,
    variables: Mapping[str, Any],
    max_depth: int = MAX_DEPTH,
    max_aliases: int = MAX_ALIASES,
    max_cost: int,
) -> list[GraphQLError]:
    """Why `document` is refused: an operation deeper than `max_depth` or costing more than
    `max_cost`, or more than `max_aliases` aliased fields in all; empty when it is not."""
    measure = DocumentMeasure(schema, document, variables)
    errors: list[GraphQLError] = []
    aliases = 0
    for operation in measure.operations:
        found = measure.operation(operation)
        aliases += found.aliases
        name = operation.name.value if operation.name else "anonymous"
        if found.depth > max_depth:
            message = f"'{name}' exceeds maximum operation depth of {max_depth}"
            errors.append(GraphQLError(message, operation))
        if found.cost > max_cost:
            exc = QueryTooCostly(
                f"The operation '{name}' costs {found.cost}"
                f"{' or more' if found.cost >= SATURATED else ''}; the limit is {max_cost}. "
                "Each field counts 1, and the fields under one with `first` or `k` count once "
                "per item it may return: ask for smaller pages or fewer fields.",
                extra={"cost": found.cost, "limit": max_cost},
            )
            errors.append(GraphQLError(exc.detail, operation, original_error=exc))
    if aliases > max_aliases:
        errors.append(GraphQLError(f"{aliases} aliases found. Allowed: {max_aliases}"))
    return errors


class DocumentGuards(SchemaExtension):
    """Refuses a document that `guard_errors` finds fault with, before the specification's
    validation rules run: those walk the whole document too, and a refused one need not pay
    for them. Made per operation (the schema holds a factory)."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None and context.pre_execution_errors is None:
            errors = guard_errors(
                context.schema._schema,
                document,
                # A `variables` that is not an object is refused before this; be sure anyway.
                variables=context.variables if isinstance(context.variables, Mapping) else {},
                max_cost=max_cost(context.context),
            )
            if errors:
                # Strawberry skips its validation when errors are there already.
                context.pre_execution_errors = errors
        yield


def max_cost(context: object) -> int:
    """The server's cost limit; its default for a schema executed without a request (tests,
    `export-schema`)."""
    if isinstance(context, Context):
        return context.runtime.settings.graphql_max_cost
    default = Settings.model_fields["graphql_max_cost"].default
    assert isinstance(default, int)
    return default
