"""The MCP door (the package; its modules follow in the next commit)."""

from app.mcp.edge import build_server, mcp_route

__all__ = ["build_server", "mcp_route"]
