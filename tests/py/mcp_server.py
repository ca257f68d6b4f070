"""A small, real MCP server (official Python SDK, `mcp` 2.x) used as a backend in the e2e tests.

Usage: python tests/py/mcp_server.py --port N [--host 127.0.0.1] [--name NAME] [--stateless] [--json] [--log-http]

Serves Streamable HTTP on http://HOST:PORT/mcp. Besides the handshake-era protocol revisions
(sessions with `Mcp-Session-Id`, or none with --stateless), the SDK's session manager also
answers 2026-07-28 stateless requests (selected by the `MCP-Protocol-Version` header) on the
same endpoint.

Tools: add(a, b), whoami() -> NAME, slow_progress(steps, delay) which reports progress,
calls() -> the names of the tools this process has run, in order (what reached the backend),
change_tools() which announces that the tool list changed (notifications/tools/list_changed: on
the session's stream in the handshake era, to `subscriptions/listen` streams at 2026-07-28),
touch_resource(uri) which announces that a resource was updated (the same way),
mention_change() which only logs a line quoting notifications/tools/list_changed (on its call's
stream: nothing changed),
ask_name() and ask_twice() which ask their client for input (elicitation: once, twice) and note in
calls() each start, each answer and a cancellation while waiting.
`add` is annotated destructive and `whoami` read-only (for `confirm_destructive`).
Resource: info://name. Prompt: greet(who).
"""

from __future__ import annotations

import argparse

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import BaseModel


def build_server(name: str) -> MCPServer:
    server = MCPServer(name=name, version="0.0.1", log_level="WARNING")
    ran: list[str] = []

    # Annotations for `confirm_destructive` (tests/py/test_policy.py): adding counts as
    # destructive here, whoami only reads.
    @server.tool(annotations=ToolAnnotations(destructiveHint=True))
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append("add")
        return a + b

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def whoami() -> str:
        """Return this backend's name."""
        ran.append("whoami")
        return name

    @server.tool()
    def calls() -> str:
        """The tools this backend has run so far, comma separated."""
        return ",".join(ran)

    @server.tool()
    async def change_tools(ctx: Context) -> str:
        """Tell clients that the tool list changed (notifications/tools/list_changed)."""
        try:
            await ctx.notify_tools_changed()  # subscriptions/listen streams (2026-07-28)
        except Exception:
            pass
        try:
            await ctx.session.send_tool_list_changed()  # the session's client (2025 era)
        except Exception:
            pass
        return "changed"

    @server.tool()
    async def mention_change(ctx: Context) -> str:
        """Log a line that only quotes notifications/tools/list_changed (no change is announced)."""
        await ctx.info("a log line quoting notifications/tools/list_changed")
        return "mentioned"

    @server.tool()
    async def touch_resource(ctx: Context, uri: str) -> str:
        """Tell subscribers that the resource `uri` was updated (notifications/resources/updated:
        to the session's subscribers in the handshake era, to `subscriptions/listen` streams
        whose filter names it at 2026-07-28)."""
        try:
            await ctx.notify_resource_updated(uri)
        except Exception:
            pass
        try:
            await ctx.session.send_resource_updated(uri)
        except Exception:
            pass
        return "touched"

    class Name(BaseModel):
        name: str

    async def elicit_name(ctx: Context, tool: str, question: str) -> str | None:
        try:
            got = await ctx.elicit(question, Name)
        except anyio.get_cancelled_exc_class():
            ran.append(f"{tool}:cancelled")
            raise
        ran.append(f"{tool}:answered")
        return got.data.name if got.action == "accept" and got.data is not None else None

    @server.tool()
    async def ask_name(ctx: Context) -> str:
        """Ask the client for a name (one elicitation round), then greet it."""
        ran.append("ask_name")
        name = await elicit_name(ctx, "ask_name", "What is your name?")
        return f"Hello {name}" if name else "no name"

    @server.tool()
    async def ask_twice(ctx: Context) -> str:
        """Ask the client for two names (two elicitation rounds), then greet both."""
        ran.append("ask_twice")
        first = await elicit_name(ctx, "ask_twice", "First name?")
        second = await elicit_name(ctx, "ask_twice", "Second name?")
        return f"Hello {first} and {second}"

    add_progress_name_and_greeting(server, name, progress_delay=0.5)
    return server


def add_progress_name_and_greeting(server: MCPServer, name: str, progress_delay: float) -> None:
    """The parts this server shares with `legacy_server.py`: the tool slow_progress(steps, delay)
    (`delay` defaults to `progress_delay`), the resource info://name and the prompt greet(who)."""

    @server.tool()
    async def slow_progress(ctx: Context, steps: int = 3, delay: float = progress_delay) -> str:
        """Report progress `steps` times, sleeping `delay` seconds between reports, then return "done"."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}/{steps}")
            if i < steps:
                await anyio.sleep(delay)
        return "done"

    @server.resource("info://name", mime_type="text/plain")
    def info_name() -> str:
        """This server's name."""
        return name

    @server.prompt()
    def greet(who: str) -> str:
        """A greeting prompt."""
        return f"Hello {who}, this is {name}."


def loopback_security() -> TransportSecuritySettings:
    """DNS-rebinding protection on (as in real deployments), accepting loopback Host and Origin
    values with any port, so a proxy that sets Host to the backend's authority (or passes
    127.0.0.1:PROXYPORT) works."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="py")
    parser.add_argument("--stateless", action="store_true", help="legacy streamable HTTP without sessions")
    parser.add_argument("--json", action="store_true", help="answer with application/json instead of SSE")
    parser.add_argument("--log-http", action="store_true", help="print each HTTP request's method, path and session id")
    args = parser.parse_args()

    security = loopback_security()
    if args.log_http:
        # Each HTTP request's method, path and session id on stdout (what reached the backend).
        import uvicorn

        app = build_server(args.name).streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=args.stateless,
            json_response=args.json,
            transport_security=security,
        )

        async def logged(scope, receive, send) -> None:
            if scope["type"] == "http":
                sid = dict(scope["headers"]).get(b"mcp-session-id", b"-").decode()
                print(f"HTTP {scope['method']} {scope['path']} session={sid}", flush=True)
            await app(scope, receive, send)

        uvicorn.run(logged, host=args.host, port=args.port, log_level="warning")
        return
    build_server(args.name).run(
        "streamable-http",
        host=args.host,
        port=args.port,
        streamable_http_path="/mcp",
        stateless_http=args.stateless,
        json_response=args.json,
        transport_security=security,
    )


if __name__ == "__main__":
    main()
