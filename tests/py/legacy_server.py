"""An SSE-only MCP server (official Python SDK `mcp` 2.x, the 2024-11-05 HTTP+SSE transport).

Usage: python tests/py/legacy_server.py --port N [--host 127.0.0.1] [--name NAME]

Serves `GET /sse` (the event stream; its first event, `endpoint`, names
`/messages/?session_id=...`) and `POST /messages/`. Nothing else: no Streamable HTTP, so
new clients reach it only through a bridge (mcplb's LegacyBackend).

Tools: add(a, b), whoami() -> NAME, slow_progress(steps, delay) which reports progress,
log_then(text) which sends a log message before answering. Resource: info://name.
Prompt: greet(who).
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import Context, MCPServer
from mcp_server import add_progress_name_and_greeting, loopback_security


def build_server(name: str) -> MCPServer:
    server = MCPServer(name=name, version="0.0.1", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def whoami() -> str:
        """Return this server's name."""
        return name

    add_progress_name_and_greeting(server, name, progress_delay=0.3)

    @server.tool()
    async def log_then(ctx: Context, text: str = "hello") -> str:
        """Send an info log message, then return `text`."""
        await ctx.info(f"log: {text}")
        return text

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="py-legacy")
    args = parser.parse_args()
    build_server(args.name).run("sse", host=args.host, port=args.port, transport_security=loopback_security())


if __name__ == "__main__":
    main()
