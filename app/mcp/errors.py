"""The MCP door's errors: every failure after the edge becomes a tool result, in one place.

An `AppError` (and a validation error, and anything unexpected) is answered as a tool result with
`isError: true` whose `structuredContent` is the problem body REST would answer (`code`,
`status`, `detail`, `request_id`, and `errors` or `retry_after` where they apply), so an agent
reads the same stable `code` either way. `Gate`, an SDK middleware, does it for what the edge and
the SDK refuse; `answer` for what a tool's work raises.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, ListToolsResult, TextContent
from pydantic import BaseModel, ValidationError

from app.errors import (
    AppError,
    InsufficientScope,
    InternalError,
    RouteNotFound,
    ValidationFailed,
)
from app.http.problems import problem_body
from app.http.validation import from_validation_error
from app.mcp.catalog import EMPTY, METHODS
from app.mcp.edge import PATH, POLICIES, SCOPES, caller_of, may_use
from app.services.runtime import Principal, Runtime

log = logging.getLogger(__name__)


def error_result(exc: AppError) -> CallToolResult:
    """An AppError as a tool result: the REST problem body as structured content."""
    body = problem_body(exc, instance=PATH)
    if "Retry-After" in exc.headers:
        body["retry_after"] = int(exc.headers["Retry-After"])
    return CallToolResult(
        content=[TextContent(type="text", text=f"{exc.code}: {exc.detail}")],
        structured_content=body,
        is_error=True,
    )


class Gate:
    """SDK middleware: a `tools/call` the edge found over its limit is answered as a tool result
    (so an agent reads `retry_after`), and the SDK's own refusals of a call get a code. The
    caller's scopes decide which tools `tools/list` shows and which calls run.

    `arguments` is each tool's arguments as a model (`app.mcp.tools.arguments_model`): the SDK
    refuses arguments off a tool's schema with pydantic's text before the tool runs, so the gate
    validates them again with the same bounds to answer as REST does, with `errors[]` pointers
    and each field's code and message."""

    def __init__(self, arguments: Mapping[str, type[BaseModel]]) -> None:
        self.arguments = arguments

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "tools/list":
            return _visible(caller_of(ctx.request).principal, await call_next(ctx))
        if ctx.method in METHODS:
            return await _serve(ctx)
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        params = ctx.params or {}
        name = str(params.get("name"))
        caller = caller_of(ctx.request)
        if caller.refused is not None:  # the edge charges every message; this one was over
            return error_result(caller.refused)
        if not may_use(caller.principal, name):
            return error_result(
                InsufficientScope(f"This key does not have the {SCOPES[name]} scope for {name}.")
            )
        result = await call_next(ctx)
        wire = result.model_dump(by_alias=True) if isinstance(result, BaseModel) else result
        if isinstance(wire, dict) and wire.get("isError") and wire.get("structuredContent") is None:
            # Every tool answers its own failures with a code, so an error without one is the
            # SDK refusing the call before the tool ran: an unknown tool, or arguments off its
            # schema.
            if name not in POLICIES:
                return error_result(RouteNotFound(f"No tool {name!r}."))
            return error_result(self._refusal(name, params.get("arguments"), wire))
        return result

    def _refusal(self, name: str, arguments: object, wire: dict[str, Any]) -> AppError:
        model = self.arguments.get(name)
        if model is not None:
            try:
                model.model_validate(arguments if arguments is not None else {})
            except ValidationError as exc:
                return from_validation_error(exc, where="arguments")
        # The model took what the SDK refused (it should not): its own text, without the link
        # to pydantic's website that ends each error, is the detail.
        text = "\n".join(c.get("text", "") for c in wire.get("content", []))
        text = "\n".join(line for line in text.splitlines() if "errors.pydantic.dev" not in line)
        return ValidationFailed(text or "The arguments do not fit the tool.")


async def _serve(ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
    """A prompts or resources method, answered for the caller (`app.mcp.catalog`): a failure
    is a JSON-RPC error whose `data` is the problem body REST would answer."""
    caller = caller_of(ctx.request)
    scope, listing, handler = METHODS[ctx.method]
    if scope not in caller.principal.scopes:
        if listing:  # offered nothing, as tools/list leaves out what would be refused
            return EMPTY[ctx.method]
        raise _jsonrpc_error(
            InsufficientScope(f"This key does not have the {scope} scope for {ctx.method}.")
        )
    try:
        return await handler(caller.runtime, caller.principal, ctx.params or {})
    except ValidationError as exc:
        raise _jsonrpc_error(from_validation_error(exc, where="params")) from None
    except AppError as exc:
        raise _jsonrpc_error(exc) from None
    except Exception:
        log.exception("MCP %s failed", ctx.method)
        raise _jsonrpc_error(
            InternalError("An unexpected error occurred; it has been logged with the request id.")
        ) from None


def _jsonrpc_error(exc: AppError) -> MCPError:
    body = problem_body(exc, instance=PATH)
    code = INTERNAL_ERROR if exc.status >= 500 else INVALID_PARAMS
    return MCPError(code=code, message=f"{exc.code}: {exc.detail}", data=body)


def _visible(principal: Principal, result: HandlerResult) -> HandlerResult:
    """A `tools/list` answer without the tools the caller may not call: an agent is not
    offered what would only be refused."""
    if isinstance(result, ListToolsResult):
        return result.model_copy(
            update={"tools": [t for t in result.tools if may_use(principal, t.name)]}
        )
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        tools = [
            t
            for t in result["tools"]
            if not isinstance(t, dict) or may_use(principal, str(t.get("name")))
        ]
        return {**result, "tools": tools}
    return result


async def answer(
    ctx: Context, work: Callable[[Runtime, Principal], Awaitable[BaseModel]]
) -> CallToolResult:
    """Run a tool's work for the caller: its result as structured content (and as JSON text for
    clients that read only text), or its failure as an error result with the code."""
    caller = caller_of(ctx.request_context.request)
    try:
        result = await work(caller.runtime, caller.principal)
    except ValidationError as exc:
        return error_result(from_validation_error(exc, where="arguments"))
    except AppError as exc:
        return error_result(exc)
    except Exception:
        log.exception("MCP tool failed")
        return error_result(
            InternalError("An unexpected error occurred; it has been logged with the request id.")
        )
    data = result.model_dump(mode="json")
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)
