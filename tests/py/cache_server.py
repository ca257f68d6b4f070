"""A small MCP backend (2025-06-18 Streamable HTTP without sessions, JSON-RPC written by hand)
for the response cache tests: it counts every request it gets, by path and method, so a test
can see what reached it.

Paths: /public answers lists with `cacheScope: "public"` (on an SSE stream), /private with
"private" (JSON; both `ttlMs: 60000`), /ruled with "public" (JSON), /plain with no hints,
/stream with no hints (its tool list on an SSE stream, as /public's), /modern-private with
"private" as a 2026-07-28 server (its `server/discover` names the revision; no `initialize`). Tools: lookup(key) (readOnlyHint and idempotentHint;
sleeps 1 s, answers `KEY#N` with N its own call count), scan(key) (same, not annotated),
change() (answers on an SSE stream that first carries `notifications/tools/list_changed`;
its description in the list names how many times it was called),
touch(uri) (the same with `notifications/resources/updated` for that URI).
/mentions answers lists with "public" hints on an SSE stream whose events only mention the
change notifications: a log message quoting `notifications/tools/list_changed` and a tool
whose (long: over 4 KiB) description names it and `notifications/resources/updated`.
/modern-public is /modern-private with "public" hints, and lists roll() (readOnlyHint and
idempotentHint), which answers `input_required` (an elicitation) until called with
`inputResponses`, then `roll#N`, N its own count of such answers.
/shaped issues sessions and lists an `ask` tool only in a session whose client declared
`elicitation` at `initialize` (as servers that shape their tools by the client's capabilities
do; no hints).
`resources/list` lists res://cache/{a,b} and res://virtual/{a,b}; `resources/read` answers
`URI#N`, N the URI's own read count (with the path's hints).
GET /counts: the counts as JSON, {"PATH METHOD": n}.

Usage: python tests/py/cache_server.py --port N
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTS: collections.Counter[str] = collections.Counter()
LOCK = threading.Lock()
# /shaped: session id -> whether its client declared elicitation.
SESSIONS: dict[str, bool] = {}

SCHEMA = {"type": "object", "properties": {"key": {"type": "string"}}}
TOOLS = [
    {
        "name": "lookup",
        "description": "Look a key up (read-only, idempotent).",
        "inputSchema": SCHEMA,
        "annotations": {"readOnlyHint": True, "idempotentHint": True},
    },
    {"name": "scan", "description": "Look a key up (not annotated).", "inputSchema": SCHEMA},
    {"name": "change", "description": "Change the tool list.", "inputSchema": {"type": "object"}},
    {"name": "touch", "description": "Say a resource was updated.", "inputSchema": {"type": "object"}},
]


def tools() -> list[dict]:
    """The tool list: `change`'s description names how many times it was called, so the
    list's bytes change with it."""
    with LOCK:
        version = COUNTS["changes"]
    return [t if t["name"] != "change" else {**t, "description": f"Change the tool list (version {version})."}
            for t in TOOLS]


def count(key: str) -> int:
    with LOCK:
        COUNTS[key] += 1
        return COUNTS[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/counts":
            with LOCK:
                self.send(200, json.dumps(dict(COUNTS)).encode())
        else:
            self.send(405, b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        msg = json.loads(body)
        path = self.path
        method = msg.get("method", "")
        count(f"{path} {method}")
        if "id" not in msg:
            self.send(202, b"")
            return
        rid = msg["id"]
        params = msg.get("params") or {}
        hints = {
            "/public": {"ttlMs": 60000, "cacheScope": "public"},
            "/private": {"ttlMs": 60000, "cacheScope": "private"},
            "/ruled": {"ttlMs": 60000, "cacheScope": "public"},
            "/modern-private": {"ttlMs": 60000, "cacheScope": "private"},
            "/modern-public": {"ttlMs": 60000, "cacheScope": "public"},
        }.get(path, {})
        result: dict
        if path.startswith("/modern") and method == "server/discover":
            # A 2026-07-28 server: its discover names the revision (and it has no handshake).
            result = {
                "supportedVersions": ["2026-07-28"],
                "capabilities": {"tools": {"listChanged": True}, "resources": {}},
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "cache-test", "version": "0.0.1"}},
                "resultType": "complete",
            }
        elif path.startswith("/modern") and method == "initialize":
            error = {"code": -32601, "message": "Method not found: initialize"}
            self.send(200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).encode())
            return
        elif path == "/shaped" and method == "initialize":
            sid = f"shaped-{count('/shaped sessions')}"
            with LOCK:
                SESSIONS[sid] = "elicitation" in (params.get("capabilities") or {})
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "cache-test", "version": "0.0.1"},
            }
            body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("mcp-session-id", sid)
            self.end_headers()
            self.wfile.write(body)
            return
        elif path == "/shaped" and method == "tools/list":
            with LOCK:
                elicits = SESSIONS.get(self.headers.get("mcp-session-id", ""), False)
            ask = [{"name": "ask", "description": "Ask the user.", "inputSchema": {"type": "object"}}]
            result = {"tools": tools() + (ask if elicits else [])}
        elif method == "initialize":
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": True}, "resources": {}},
                "serverInfo": {"name": "cache-test", "version": "0.0.1"},
            }
        elif method == "tools/list" and path in ("/public", "/stream"):
            # An SSE answer (mcplb keeps a copy as it forwards it), after a notification of
            # another kind (which evicts nothing cached here).
            note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
            answer = {"jsonrpc": "2.0", "id": rid, "result": {"tools": tools(), **hints}}
            events = f"event: message\ndata: {json.dumps(note)}\n\nevent: message\ndata: {json.dumps(answer)}\n\n"
            self.send(200, events.encode(), "text/event-stream")
            return
        elif method == "tools/list" and path == "/mentions":
            quote = "notifications/tools/list_changed"
            note = {"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "info", "data": f"a log line quoting {quote}"}}
            long = {"name": "watch", "inputSchema": {"type": "object"},
                    "description": f"Sends {quote} and notifications/resources/updated. " + "x" * 10000}
            answer = {"jsonrpc": "2.0", "id": rid,
                      "result": {"tools": [long], "ttlMs": 60000, "cacheScope": "public"}}
            events = f"event: message\ndata: {json.dumps(note)}\n\nevent: message\ndata: {json.dumps(answer)}\n\n"
            self.send(200, events.encode(), "text/event-stream")
            return
        elif method == "tools/list" and path == "/modern-public":
            roll = {"name": "roll", "description": "Roll, once the user agrees.", "inputSchema": {"type": "object"},
                    "annotations": {"readOnlyHint": True, "idempotentHint": True}}
            result = {"tools": tools() + [roll], **hints}
        elif method == "tools/list":
            result = {"tools": tools(), **hints}
        elif method == "tools/call" and params.get("name") == "roll" and "inputResponses" not in params:
            ask = {"method": "elicitation/create",
                   "params": {"message": "Roll?", "requestedSchema": {"type": "object", "properties": {}}}}
            result = {"resultType": "input_required", "inputRequests": {"ok": ask}, "requestState": "roll-1"}
        elif method == "tools/call" and params.get("name") == "roll":
            n = count(f"{path} call roll")
            result = {"content": [{"type": "text", "text": f"roll#{n}"}], "isError": False}
        elif method == "tools/call" and params.get("name") in ("lookup", "scan"):
            n = count(f"{path} call {params['name']}")
            time.sleep(1.0)
            key = (params.get("arguments") or {}).get("key", "")
            result = {"content": [{"type": "text", "text": f"{key}#{n}"}], "isError": False}
        elif method == "tools/call" and params.get("name") == "change":
            count("changes")
            note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
            answer = {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "changed"}]}}
            events = f"event: message\ndata: {json.dumps(note)}\n\nevent: message\ndata: {json.dumps(answer)}\n\n"
            self.send(200, events.encode(), "text/event-stream")
            return
        elif method == "resources/list":
            uris = ["res://cache/a", "res://cache/b", "res://virtual/a", "res://virtual/b"]
            result = {"resources": [{"uri": u, "name": u.rsplit("/", 1)[-1]} for u in uris], **hints}
        elif method == "resources/read":
            uri = params.get("uri", "")
            n = count(f"{path} read {uri}")
            result = {"contents": [{"uri": uri, "text": f"{uri}#{n}"}], **hints}
        elif method == "tools/call" and params.get("name") == "touch":
            # notifications/resources/updated for one resource, before the answer.
            uri = (params.get("arguments") or {}).get("uri", "")
            note = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}
            answer = {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "touched"}]}}
            events = f"event: message\ndata: {json.dumps(note)}\n\nevent: message\ndata: {json.dumps(answer)}\n\n"
            self.send(200, events.encode(), "text/event-stream")
            return
        elif method == "ping":
            result = {}
        else:
            error = {"code": -32601, "message": f"Method not found: {method}"}
            self.send(200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).encode())
            return
        self.send(200, json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
