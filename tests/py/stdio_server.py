"""A tiny MCP server over stdio, standard library only, for the stdio bridge tests.

Tools: pid, echo {text}, slow {seconds, text}, progress (2 notifications/progress when
_meta.progressToken is given), crash (exits), garbage (a non-JSON line, then an answer),
big {bytes} (an answer of that size), sample {text} (a sampling/createMessage request to the
client, ids srv-1, srv-2, ...; the answer or error it got is the result), ping_client (a ping
request to the client; the answer is the result), calls_seen (the tools/call requests this
process received, as [name, arguments.text] in arrival order),
notify_later (answers, then sends a logging notification 0.3 s later), flood {count}
(that many logging notifications, then the answer), log_now {text} (one logging notification
with that text, then the answer), list_changed (notifications/tools/list_changed, then the
answer), meta_seen (this request's params._meta as JSON text). A notifications/cancelled for an in-flight
`slow` call makes it answer at once with the text "cancelled".
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

_write_lock = threading.Lock()
_cancelled: dict = {}  # request id (JSON text) -> threading.Event
_server_answers: dict = {}  # id of our requests to the client -> (Event, answer)
_server_requests = iter(range(1, 1 << 62))  # numbers of our requests to the client
_calls_seen: list = []  # [name, arguments.text] of each tools/call, in arrival order


def send(obj) -> None:
    line = json.dumps(obj, separators=(",", ":"))
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def text_result(rid, text: str) -> None:
    send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}], "isError": False}})


TOOLS = ["pid", "echo", "slow", "progress", "crash", "garbage", "big", "sample", "ping_client", "notify_later",
         "flood", "cancelled_ids", "calls_seen", "log_now", "list_changed", "meta_seen"]


def ask_client(method: str, params: dict):
    """Sends a request to the client and waits for its answer (None after 10 s)."""
    sid = f"srv-{next(_server_requests)}"
    ev = threading.Event()
    _server_answers[json.dumps(sid)] = [ev, None]
    send({"jsonrpc": "2.0", "id": sid, "method": method, "params": params})
    if not ev.wait(10):
        return None
    return _server_answers.pop(json.dumps(sid))[1]


def call_tool(rid, params: dict) -> None:
    name = params.get("name")
    args = params.get("arguments") or {}
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "cancelled_ids":
        # The request ids this process has seen cancelled (as JSON text), in arrival order.
        text_result(rid, json.dumps([k for k, ev in _cancelled.items() if ev.is_set()]))
        return
    if name == "meta_seen":
        # This request's params._meta as JSON text (the trace context mcplb passed on).
        text_result(rid, json.dumps(params.get("_meta") or {}))
        return
    if name == "pid":
        text_result(rid, str(os.getpid()))
    elif name == "echo":
        text_result(rid, str(args.get("text", "")))
    elif name == "slow":
        ev = _cancelled.setdefault(json.dumps(rid), threading.Event())
        if ev.wait(float(args.get("seconds", 0.5))):
            text_result(rid, "cancelled")
        else:
            text_result(rid, str(args.get("text", "slow")))
    elif name == "progress":
        if token is not None:
            for i in (1, 2):
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": i, "total": 2}})
                time.sleep(float(args.get("delay", 0.3)))
        text_result(rid, "done")
    elif name == "crash":
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif name == "garbage":
        with _write_lock:
            sys.stdout.write("this is not JSON at all\n")
            sys.stdout.flush()
        text_result(rid, "after garbage")
    elif name == "big":
        text_result(rid, "x" * int(args.get("bytes", 1000)))
    elif name == "sample":
        answer = ask_client("sampling/createMessage", {
            "messages": [{"role": "user", "content": {"type": "text", "text": str(args.get("text", "hi"))}}],
            "maxTokens": 5})
        if answer is None:
            text_result(rid, "no sampling answer")
            return
        text_result(rid, "sampled: " + json.dumps(answer.get("result", answer.get("error"))))
    elif name == "ping_client":
        answer = ask_client("ping", {})
        text_result(rid, "no ping answer" if answer is None else json.dumps(answer.get("result", answer.get("error"))))
    elif name == "calls_seen":
        text_result(rid, json.dumps(_calls_seen))
    elif name == "notify_later":
        text_result(rid, "soon")

        def later():
            time.sleep(0.3)
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "later"}})

        threading.Thread(target=later, daemon=True).start()
    elif name == "log_now":
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": str(args.get("text", ""))}})
        text_result(rid, "logged")
    elif name == "list_changed":
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        text_result(rid, "changed")
    elif name == "flood":
        for i in range(int(args.get("count", 1000))):
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": i}})
        text_result(rid, "flooded")
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def handle(msg: dict) -> None:
    method = msg.get("method")
    rid = msg.get("id")
    if method is None:  # an answer to one of our requests
        slot = _server_answers.get(json.dumps(rid))
        if slot is not None:
            slot[1] = msg
            slot[0].set()
        return
    if rid is None:  # a notification
        if method == "notifications/cancelled":
            key = json.dumps((msg.get("params") or {}).get("requestId"))
            _cancelled.setdefault(key, threading.Event()).set()
        return
    params = msg.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stdio-test", "version": "1.0"}}})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [
            {"name": t, "inputSchema": {"type": "object"}} for t in TOOLS]}})
    elif method == "tools/call":
        _calls_seen.append([params.get("name"), (params.get("arguments") or {}).get("text")])
        threading.Thread(target=call_tool, args=(rid, params), daemon=True).start()
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method not found: {method}"}})


def main() -> None:
    sys.stderr.write(f"stdio test server {os.getpid()} ready\n")
    sys.stderr.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            sys.stderr.write(f"bad line: {line[:100]}\n")
            continue
        handle(msg)


if __name__ == "__main__":
    main()
