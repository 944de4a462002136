"""The MCP door: a Model Context Protocol server at `/mcp` for agents (streamable HTTP).

The official SDK's `MCPServer` serves five read-only tools over the same service functions the
REST door calls, and the caller's personas as prompts and documents as resources (`catalog`).
The contract's gate runs in the same order as REST (API.md section 3), and everything the SDK
would otherwise do on its own before a tool runs is done at the edge first:

1. `edge.McpEdge`, in front of the SDK's ASGI app, checks the Host and Origin (DNS rebinding:
   421, 403; a key's own `allowed_origins` pass, as in REST), the method (POST only: 405) and
   the `X-Api-Key` (401, limited per address). It
   reads the body through the shared intake (`app.http.intake`: at most `mcp_max_body_bytes`,
   413; JSON that is bounded, finite and Unicode, 400; `application/json`, 415), charges the
   message to its rate-limit policy (`search` for `search_knowledge`, `reads` for every other
   message, `initialize`, `ping` and `tools/list` included: 429), and only then replays the
   bytes to the SDK, adding the RateLimit fields to its answer. Each refusal there is
   problem+json, as REST answers it, before the SDK has seen a byte.
2. `errors.Gate`, an SDK middleware, answers a `tools/call` the edge found over its limit as a
   tool result (so an agent reads `retry_after`), and gives the SDK's own refusals a code.
3. The SDK checks the arguments against the tool's schema (a refusal is validated again by the
   gate, so it carries REST's `errors[]`); the tool (`tools`) validates them
   with the REST request model and calls the service (through `errors.answer`).

Every failure after the edge is a tool result with `isError: true` whose `structuredContent` is
the problem body REST would answer (`code`, `status`, `detail`, `request_id`, and `errors` or
`retry_after` where they apply), so an agent reads the same stable `code` either way.

The server is stateless (no `Mcp-Session-Id`; JSON responses): each POST stands alone, so several
server processes behind one address need no shared session store, and no tool streams.

What the app's wiring (`app.main`) uses is re-exported here: `build_server` and `mcp_route`.
"""

from app.mcp.edge import mcp_route
from app.mcp.tools import build_server

__all__ = ["build_server", "mcp_route"]
