"""`@skip` and `@include`, as the guards and the charging read them before execution.

A selection that execution will leave out is neither costed nor charged: a client that toggles
a `search` with `@include(if: $withHits)` pays for it only when it runs. Only what is certain
counts as left out: a literal `@skip(if: true)` or `@include(if: false)`, or a variable whose
every possible value (the one sent, else each default the document gives it) says so. Anything
else (a variable with no value, a value that is not a Boolean, which coercion will refuse) keeps
the selection counted, so the doubt is never in the client's favour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from graphql import (
    BooleanValueNode,
    DirectiveNode,
    OperationDefinitionNode,
    SelectionNode,
    ValueNode,
    VariableNode,
)

#: Each variable's possible values: the one sent, else the defaults the document gives it.
Possible = Mapping[str, Sequence[object]]


def is_left_out(node: SelectionNode, possible: Possible) -> bool:
    """Whether execution certainly leaves `node` (a field, fragment spread or inline fragment)
    out, by its `@skip` or `@include`."""
    for directive in node.directives or ():
        name = directive.name.value
        if name not in ("skip", "include"):
            continue
        condition = _condition(directive, possible)
        # Left out when `@skip`'s condition is true or `@include`'s is false.
        if condition is not None and condition == (name == "skip"):
            return True
    return False


def _condition(directive: DirectiveNode, possible: Possible) -> bool | None:
    """The directive's `if`, when it is certain; None when it is not."""
    value = next((a.value for a in directive.arguments or () if a.name.value == "if"), None)
    if isinstance(value, BooleanValueNode):
        return value.value
    if isinstance(value, VariableNode):
        values = possible.get(value.name.value) or ()
        if values and all(v is True for v in values):
            return True
        if values and all(v is False for v in values):
            return False
    return None


def boolean_literal(node: ValueNode) -> bool | None:
    """A Boolean literal's value; None for any other node."""
    return node.value if isinstance(node, BooleanValueNode) else None


def possible_values(
    operations: Sequence[OperationDefinitionNode],
    variables: Mapping[str, object],
    *,
    literal: Callable[[ValueNode], object] = boolean_literal,
) -> dict[str, list[object]]:
    """Each variable's possible values in `operations`: the one sent, else every default the
    operations give it (operations may differ), read by `literal`."""
    possible: dict[str, list[object]] = {k: [v] for k, v in variables.items()}
    for operation in operations:
        for definition in operation.variable_definitions or ():
            name = definition.variable.name.value
            if name not in variables and definition.default_value is not None:
                possible.setdefault(name, []).append(literal(definition.default_value))
    return possible
