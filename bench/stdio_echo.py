"""The stdio backend of bench/mcp_side_by_side.py: a small MCP server over stdio, standard library
only, built to cost little per call so that the figures measure the proxy in front of it.

Answers, one line per request, in arrival order and on the reading thread (no thread per call,
no state that grows with the calls): `initialize` (echoing the client's protocol version),
`ping`, `tools/list` (one tool, `echo`), `tools/call` of `echo` (its arguments as JSON text,
the mock HTTP backend's answer), anything else with -32601. Notifications and answers to
requests it never sent are ignored. It works the same with or without `initialize` first, so a
2026-07-28 request (`_meta` instead of a session) is answered too. Exits at the end of stdin.

Run it with `python3 -S` (no site packages: a quicker start, which matters to a gateway that
starts a process per request).
"""

import json
import sys

TOOLS = {"tools": [{"name": "echo", "description": "Returns its arguments as text.",
                    "inputSchema": {"type": "object"}}]}


def answer(msg):
    """The answer to one message (a dict), or None for a notification or an answer."""
    method, rid = msg.get("method"), msg.get("id")
    if method is None or rid is None:
        return None
    params = msg.get("params") or {}
    if method == "tools/call" and params.get("name") == "echo":
        text = json.dumps(params.get("arguments") or {}, separators=(",", ":"))
        return {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}], "isError": False}}
    if method == "initialize":
        return {"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}}, "serverInfo": {"name": "stdio-echo", "version": "1"}}}
    if method == "ping":
        return {"jsonrpc": "2.0", "id": rid, "result": {}}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": rid, "result": TOOLS}
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method not found: {method}"}}


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            sys.stderr.write(f"stdio_echo: not JSON: {line[:100]!r}\n")
            continue
        if not isinstance(msg, dict):
            continue
        ans = answer(msg)
        if ans is not None:
            out.write(json.dumps(ans, separators=(",", ":")).encode() + b"\n")
            out.flush()


if __name__ == "__main__":
    main()
