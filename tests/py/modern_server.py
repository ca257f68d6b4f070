"""A 2026-07-28-only MCP server for the era bridge tests: `mcp_server.py`'s tools (official Python
SDK) served by the SDK's own single-exchange (2026-07-28) entry for every request, whatever
its `MCP-Protocol-Version`; the handshake era (`initialize`, sessions, the GET stream) is not
served: `initialize` gets the SDK's modern refusal, a GET or DELETE 405.

Usage: python tests/py/modern_server.py --port N [--name NAME]
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.transport_security import TransportSecuritySettings
from mcp_server import build_server
from starlette.responses import Response


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
