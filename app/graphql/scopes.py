"""Which key scope each GraphQL field needs (API.md section 12): the one table, and the field
extension that checks it.

Every root field needs the scope of its REST twin, so a restricted key or a tenant token gets the
same answers through both doors; a field outside the caller's scopes is refused on its own
(`auth.insufficient_scope`, status 403, null data for that field) while the other fields of the
operation still run. Persona restrictions (`persona_ids`) and a token's forced metadata are
applied by the services the resolvers call, as for REST, not here.

Below the root, only a field that reaches data of another scope is listed: `Persona.knowledge`
pages through the attached documents themselves, which REST shows only to `docs:read`
(`knowledgeExternalIds` is part of REST's persona and stays with `personas:read`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from strawberry.extensions import FieldExtension

from app.errors import InsufficientScope
from app.models import Scope

#: (GraphQL type, field) -> the scope it needs. `tests/graphql/test_scopes.py` checks every
#: root field is here, so a new root field cannot be added without deciding its scope.
FIELD_SCOPES: dict[tuple[str, str], Scope] = {
    # `viewer` (the account's email and plan) is account data, like REST's
    # GET /api/subscription: not for a browser widget's key or a tenant token.
    ("Query", "viewer"): "usage:read",
    ("Query", "knowledgeDocs"): "docs:read",
    ("Query", "knowledgeDoc"): "docs:read",
    ("Query", "knowledgeChanges"): "docs:read",
    ("Query", "personas"): "personas:read",
    ("Query", "persona"): "personas:read",
    ("Query", "plan"): "usage:read",
    ("Query", "usage"): "usage:read",
    ("Query", "search"): "search",
    ("Mutation", "upsertKnowledgeDocs"): "docs:write",
    ("Mutation", "upsertKnowledgeDoc"): "docs:write",
    ("Mutation", "deleteKnowledgeDoc"): "docs:write",
    ("Mutation", "createPersona"): "personas:write",
    ("Mutation", "updatePersona"): "personas:write",
    ("Mutation", "deletePersona"): "personas:write",
    ("Mutation", "setPersonaKnowledge"): "personas:write",
    ("Persona", "knowledge"): "docs:read",
}


class NeedsScope(FieldExtension):
    """Refuse the field unless the caller has the scope `FIELD_SCOPES` gives it. A field the
    table does not know is refused too (fail closed), though the test keeps that from
    happening."""

    def _check(self, info: Any) -> None:
        principal = info.context.principal
        scope = FIELD_SCOPES.get((info.path.typename, info.field_name))
        if scope is None:
            raise InsufficientScope(f"No scope is declared for {info.field_name}.")
        principal.require(scope)

    def resolve(self, next_: Callable[..., Any], source: Any, info: Any, **kwargs: Any) -> Any:
        self._check(info)
        return next_(source, info, **kwargs)

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: Any, **kwargs: Any
    ) -> Any:
        self._check(info)
        result = next_(source, info, **kwargs)
        # A sync resolver's value comes back as is on the async path.
        return await result if isinstance(result, Awaitable) else result
