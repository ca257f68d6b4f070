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

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings


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

    @server.tool()
    async def slow_progress(ctx: Context, steps: int = 3, delay: float = 0.3) -> str:
        """Report progress `steps` times, sleeping `delay` seconds between reports, then return "done"."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}/{steps}")
            if i < steps:
                await anyio.sleep(delay)
        return "done"

    @server.tool()
    async def log_then(ctx: Context, text: str = "hello") -> str:
        """Send an info log message, then return `text`."""
        await ctx.info(f"log: {text}")
        return text

    @server.resource("info://name", mime_type="text/plain")
    def info_name() -> str:
        """This server's name."""
        return name

    @server.prompt()
    def greet(who: str) -> str:
        """A greeting prompt."""
        return f"Hello {who}, this is {name}."

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="py-legacy")
    args = parser.parse_args()
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    build_server(args.name).run("sse", host=args.host, port=args.port, transport_security=security)


if __name__ == "__main__":
    main()
