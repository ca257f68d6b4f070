"""A 2026-07-28-only MCP server for the era bridge tests: `mcp_server.py`'s tools (official Python
SDK) served by the SDK's own single-exchange (2026-07-28) entry for every request, whatever
its `MCP-Protocol-Version`; the handshake era (`initialize`, sessions, the GET stream) is not
served: `initialize` gets the SDK's modern refusal, a GET or DELETE 405.

Beyond `mcp_server.py`'s tools, `introduce` asks its client for input the 2026-07-28 way (an
`input_required` result, resolved by the SDK's `Resolve` markers) in two rounds: an elicitation
(the caller's name) and `roots/list` together, then, with the name, a sampling request; it
returns "NAME|ROOTS|SAMPLED".

Usage: python tests/py/modern_server.py --port N [--name NAME]
"""

from __future__ import annotations

import argparse
from typing import Annotated

import uvicorn
from mcp.server.mcpserver.resolve import Elicit, ListRoots, Resolve, Sample
from mcp_types import CreateMessageResult, ListRootsResult, SamplingMessage, TextContent
from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.transport_security import TransportSecuritySettings
from mcp_server import build_server
from pydantic import BaseModel
from starlette.responses import Response


class Person(BaseModel):
    name: str


def ask_name() -> Elicit[Person]:
    return Elicit("Who is calling?", Person)


def ask_roots() -> ListRoots:
    return ListRoots()


def ask_poem(person: Annotated[Person, Resolve(ask_name)]) -> Sample:
    text = TextContent(type="text", text=f"A line for {person.name}")
    return Sample([SamplingMessage(role="user", content=text)], max_tokens=20)


def add_input_tools(server) -> None:
    @server.tool()
    def introduce(
        person: Annotated[Person, Resolve(ask_name)],
        roots: Annotated[ListRootsResult, Resolve(ask_roots)],
        poem: Annotated[CreateMessageResult, Resolve(ask_poem)],
    ) -> str:
        """Ask the caller for its name and roots, then sample a line for it."""
        sampled = poem.content.text if isinstance(poem.content, TextContent) else "?"
        return "|".join([person.name, ",".join(str(r.uri) for r in roots.roots), sampled])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="modern")
    args = parser.parse_args()
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "127.0.0.1", "localhost"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
    )
    server = build_server(args.name)
    add_input_tools(server)
    app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security)
    manager = server.session_manager

    async def modern_only(scope, receive, send) -> None:
        if scope["method"] != "POST":
            await Response(status_code=405, headers={"allow": "POST"})(scope, receive, send)
            return
        await handle_modern_request(
            manager.app, manager.security_settings, False, manager._lifespan_state, scope, receive, send
        )

    manager.asgi_app = modern_only
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
