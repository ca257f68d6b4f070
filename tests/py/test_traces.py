"""OpenTelemetry traces end to end: a real mcplb with `[telemetry]`, a local OTLP/HTTP receiver
that decodes the protobuf it gets (PyPI `opentelemetry-proto`), and backends that record the
trace context they are given: a plain HTTP JSON-RPC backend (the `traceparent` header) and a
stdio server (`params._meta.traceparent`).

One trace id must run through the client's request, mcplb's span and the backend's
`traceparent`, whose parent is mcplb's span.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import HERE, free_port, make_pki, start_proxy_file
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
WAIT = 15.0  # seconds a span may take to reach the receiver (batches leave every 0.5 s)


class _Quiet(BaseHTTPRequestHandler):
    """A request handler with `answer` and no request log."""

    def answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server:
    """A threaded HTTP server on 127.0.0.1 (port 0) running `handler` until `close`."""

    def serve(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(_Server):
    """An OTLP/HTTP traces endpoint on loopback: every span it decodes goes to a queue. With
    `tls` (certificate chain, key): over https."""

    def __init__(self, fail_first: int = 0, tls: tuple[Path, Path] | None = None) -> None:
        self.spans: queue.Queue = queue.Queue()
        self.content_types: list[str] = []
        self.failures_left = fail_first  # answer this many exports 503 first
        outer = self

        class Handler(_Quiet):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.content_types.append(self.headers.get("content-type", ""))
                if outer.failures_left > 0:
                    outer.failures_left -= 1
                    self.answer(503, "text/plain", b"")
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            outer.spans.put((service, s))
                self.answer(200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString())

        self.serve(Handler)
        if tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)

    def next_span(self, timeout: float = WAIT):
        service, s = self.spans.get(timeout=timeout)
        return service, s


class Backend(_Server):
    """A stateless JSON-RPC backend over HTTP that records the `traceparent` of each request
    (by JSON-RPC id). Method `fail` is answered with error -32601."""

    def __init__(self) -> None:
        self.seen: dict = {}
        outer = self

        class Handler(_Quiet):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                outer.seen[json.dumps(body.get("id"))] = self.headers.get("traceparent")
                if body.get("method") == "fail":
                    answer = {"jsonrpc": "2.0", "id": body.get("id"), "error": {"code": -32601, "message": "no"}}
                else:
                    answer = {"jsonrpc": "2.0", "id": body.get("id"), "result": {"content": []}}
                self.answer(200, "application/json", json.dumps(answer).encode())

        self.serve(Handler)


def _config(tmp: Path, backends: str, receiver: Receiver, ratio: float, admin: int, endpoint: str | None = None) -> Path:
    p = tmp / "mcplb-traces.toml"
    p.write_text(
        "[proxy]\n"
        'listen = "127.0.0.1:0"\n'
        "workers = 2\n"
        "[admin]\n"
        f'listen = "127.0.0.1:{admin}"\n'
        "[[servers]]\n"
        'name = "tools"\n'
        'path = "/mcp"\n'
        f"backends = [{backends}]\n"
        "[servers.health]\n"
        "enabled = false\n"
        "[telemetry]\n"
        + (endpoint or f'otlp_endpoint = "http://127.0.0.1:{receiver.port}/v1/traces"\n')
        + 
        'service_name = "mcplb-test"\n'
        f"sample_ratio = {ratio}\n"
    )
    return p


def _post(url: str, msg: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(msg).encode()
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, dict(r.headers), json.loads(body) if body else {}
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def _attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.int_value if v.HasField("int_value") else v.bool_value if v.HasField("bool_value") else v.string_value
    return out


def _parts(traceparent: str) -> tuple[str, str, str]:
    version, trace, parent, flags = traceparent.split("-")
    assert version == "00"
    return trace, parent, flags


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


def test_one_trace_across_client_mcplb_and_backend(tmp_path, receiver, backend):
    admin = free_port()
    cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', receiver, 1.0, admin)
    proxy = start_proxy_file(cfg)
    try:
        # 1. The client's traceparent header is continued.
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
        status, _, _ = _post(proxy.url, call, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
        assert status == 200
        trace, parent, flags = _parts(backend.seen["1"])
        assert (trace, flags) == (TRACE, "01")
        assert parent != CLIENT_SPAN, "the backend's parent is mcplb's span, not the client's"
        service, span = receiver.next_span()
        assert service["service.name"] == "mcplb-test"
        assert span.trace_id.hex() == TRACE
        assert span.span_id.hex() == parent
        assert span.parent_span_id.hex() == CLIENT_SPAN
        assert span.name == "tools/call add"
        a = _attrs(span)
        assert a["mcp.method.name"] == "tools/call"
        assert a["gen_ai.tool.name"] == "add"
        assert a["mcplb.server_group"] == "tools"
        assert a["mcplb.backend"].startswith("127.0.0.1:")
        assert a["http.response.status_code"] == 200
        assert a["mcplb.retries"] == 0
        assert a["jsonrpc.request.id"] == "1"
        assert a["mcplb.upstream_us"] >= 0 and a["mcplb.own_us"] >= 0
        assert "rpc.jsonrpc.error_code" not in a
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
        assert all(ct == "application/x-protobuf" for ct in receiver.content_types)

        # 2. A backend's JSON-RPC error is on the span, which is an error.
        status, _, body = _post(proxy.url, {"jsonrpc": "2.0", "id": 2, "method": "fail"})
        assert status == 200 and body["error"]["code"] == -32601
        _, span = receiver.next_span()
        assert _attrs(span)["rpc.jsonrpc.error_code"] == -32601
        assert span.status.code == 2  # STATUS_CODE_ERROR
        # No traceparent from the client: mcplb starts the trace and is the root.
        trace, parent, flags = _parts(backend.seen["2"])
        assert span.trace_id.hex() == trace and span.span_id.hex() == parent and flags == "01"
        assert span.parent_span_id == b""

        # 3. A refusal mcplb makes itself (a bad frame) has its span too, with the code.
        status, _, _ = _post(proxy.url, {"jsonrpc": "2.0", "id": 3}, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
        assert status == 400
        _, span = receiver.next_span()
        assert span.trace_id.hex() == TRACE
        assert _attrs(span)["mcplb.by_proxy"] is True
        assert _attrs(span)["rpc.jsonrpc.error_code"] == -32600

        # The exporter's counters on /metrics.
        deadline = time.monotonic() + WAIT
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
            exported = [l for l in text.splitlines() if l.startswith("mcplb_trace_spans_exported_total ")]
            if exported and int(exported[0].split()[1]) >= 3:
                break
            assert time.monotonic() < deadline, exported
            time.sleep(0.2)
        assert "mcplb_trace_spans_dropped_total 0" in text
    finally:
        proxy.stop()


def test_meta_traceparent_is_continued(tmp_path, receiver, backend):
    cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', receiver, 1.0, free_port())
    proxy = start_proxy_file(cfg)
    try:
        call = {
            "jsonrpc": "2.0",
            "id": "m1",
            "method": "prompts/get",
            "params": {"name": "greet", "_meta": {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"}},
        }
        status, _, _ = _post(proxy.url, call)
        assert status == 200
        trace, parent, _ = _parts(backend.seen['"m1"'])
        assert trace == TRACE
        _, span = receiver.next_span()
        assert span.trace_id.hex() == TRACE
        assert span.parent_span_id.hex() == CLIENT_SPAN
        assert span.span_id.hex() == parent
        assert _attrs(span)["gen_ai.prompt.name"] == "greet"
        assert _attrs(span)["jsonrpc.request.id"] == "m1"
    finally:
        proxy.stop()


def test_stdio_backend_gets_the_trace_in_meta(tmp_path, receiver):
    command = json.dumps(["python3", str(HERE / "stdio_server.py")])
    cfg = _config(tmp_path, f'{{ command = {command}, mode = "per-session" }}', receiver, 1.0, free_port())
    proxy = start_proxy_file(cfg)
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }
        status, headers, _ = _post(proxy.url, init)
        assert status == 200
        sid = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
        h = {"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        assert _post(proxy.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)[0] == 202
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "meta_seen", "arguments": {}}}
        status, _, body = _post(proxy.url, call, {**h, "traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
        assert status == 200, body
        meta = json.loads(body["result"]["content"][0]["text"])
        trace, parent, flags = _parts(meta["traceparent"])
        assert (trace, flags) == (TRACE, "01")
        # The spans of initialize and the notification come first (new traces, all sampled).
        deadline = time.monotonic() + WAIT
        while True:
            _, span = receiver.next_span(max(0.1, deadline - time.monotonic()))
            if span.trace_id.hex() == TRACE:
                break
        assert span.span_id.hex() == parent
        assert span.parent_span_id.hex() == CLIENT_SPAN
        assert _attrs(span)["gen_ai.tool.name"] == "meta_seen"
        assert "mcplb.session.hash" in _attrs(span)
    finally:
        proxy.stop()


def test_sampling_zero_exports_nothing(tmp_path, receiver, backend):
    cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', receiver, 0.0, free_port())
    proxy = start_proxy_file(cfg)
    try:
        for i in range(20):
            # New traces (ratio 0: not recorded) and a caller's unsampled trace.
            headers = {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-00"} if i % 2 else {}
            status, _, _ = _post(proxy.url, {"jsonrpc": "2.0", "id": i, "method": "tools/list"}, headers)
            assert status == 200
            trace, _, flags = _parts(backend.seen[str(i)])
            assert flags == "00", "the backend is told the trace is not sampled"
            if i % 2:
                assert trace == TRACE
        # A caller's sampled trace is recorded whatever the ratio (its flag decides): once its
        # span has arrived, every earlier one would have too (one queue, one exporter).
        status, _, _ = _post(
            proxy.url,
            {"jsonrpc": "2.0", "id": 99, "method": "ping"},
            {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"},
        )
        assert status == 200
        _, span = receiver.next_span()
        assert _attrs(span)["jsonrpc.request.id"] == "99"
        time.sleep(1.0)
        assert receiver.spans.empty()
    finally:
        proxy.stop()


def _metric(admin: int, name: str) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_export_is_retried_and_flushed_at_shutdown(tmp_path, backend):
    receiver = Receiver(fail_first=2)
    admin = free_port()
    cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', receiver, 1.0, admin)
    proxy = start_proxy_file(cfg)
    try:
        # The collector answers 503 twice: the batch is sent again (with backoff) and arrives.
        status, _, _ = _post(proxy.url, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert status == 200
        _, span = receiver.next_span()
        assert _attrs(span)["jsonrpc.request.id"] == "1"
        assert _metric(admin, "mcplb_trace_export_retries_total") == 2
        assert _metric(admin, "mcplb_trace_spans_failed_total") == 0
        # This receiver closes each connection after its answer (HTTP/1.0): the exporter's
        # kept connection is found closed and replaced at once, not counted as a retry.
        assert _post(proxy.url, {"jsonrpc": "2.0", "id": 2, "method": "ping"})[0] == 200
        _, span = receiver.next_span()
        assert _attrs(span)["jsonrpc.request.id"] == "2"
        assert _metric(admin, "mcplb_trace_export_retries_total") == 2
        # A span still waiting in its batch when mcplb is told to stop is exported before it
        # exits (the request's connection is released only after its span was handed over).
        status, _, _ = _post(proxy.url, {"jsonrpc": "2.0", "id": 3, "method": "ping"})
        assert status == 200
        proxy.stop()
        assert proxy.proc.returncode == 0
        _, span = receiver.next_span(timeout=1.0)
        assert _attrs(span)["jsonrpc.request.id"] == "3"
    finally:
        proxy.stop()
        receiver.close()


def test_reload_changes_ratio_and_collector(tmp_path, backend):
    first, second = Receiver(), Receiver()
    admin = free_port()
    cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', first, 0.0, admin)
    proxy = start_proxy_file(cfg)
    try:
        assert _post(proxy.url, {"jsonrpc": "2.0", "id": 1, "method": "ping"})[0] == 200
        # The same collector, every trace sampled now: the running exporter goes on.
        _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', first, 1.0, admin)
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", data=b"", method="POST")
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["reloaded"] is True
        assert _post(proxy.url, {"jsonrpc": "2.0", "id": 2, "method": "ping"})[0] == 200
        _, span = first.next_span()
        assert _attrs(span)["jsonrpc.request.id"] == "2", "request 1 (ratio 0) was not recorded"
        # Another collector: a new exporter sends there.
        _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', second, 1.0, admin)
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["reloaded"] is True
        assert _post(proxy.url, {"jsonrpc": "2.0", "id": 3, "method": "ping"})[0] == 200
        _, span = second.next_span()
        assert _attrs(span)["jsonrpc.request.id"] == "3"
        assert first.spans.empty()
    finally:
        proxy.stop()
        first.close()
        second.close()


def test_spans_go_to_an_https_collector(tmp_path, backend):
    """`otlp_endpoint = "https://..."` with `ca`: the spans reach a collector over TLS whose
    certificate chains to that CA; without the CA (system roots only) none is exported and the
    failures are counted, while requests go on."""
    ca, chain, key = make_pki(tmp_path)
    receiver = Receiver(tls=(chain, key))
    try:
        admin = free_port()
        endpoint = f'otlp_endpoint = "https://127.0.0.1:{receiver.port}/v1/traces"\nca = "{ca}"\n'
        cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', receiver, 1.0, admin, endpoint)
        proxy = start_proxy_file(cfg)
        try:
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
            status, _, _ = _post(proxy.url, call, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
            assert status == 200
            _, span = receiver.next_span()
            assert span.trace_id.hex() == TRACE and span.name == "tools/call add"
        finally:
            proxy.stop()

        # The same collector, not trusted: nothing is exported, every request still answered.
        admin = free_port()
        endpoint = f'otlp_endpoint = "https://127.0.0.1:{receiver.port}/v1/traces"\n'
        cfg = _config(tmp_path, f'"http://127.0.0.1:{backend.port}/mcp"', receiver, 1.0, admin, endpoint)
        proxy = start_proxy_file(cfg)
        try:
            for i in range(3):
                call = {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
                assert _post(proxy.url, call)[0] == 200
            deadline = time.monotonic() + WAIT
            while True:
                text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
                failed = [l for l in text.splitlines() if l.startswith("mcplb_trace_export_retries_total ")]
                if failed and int(failed[0].split()[1]) >= 1:
                    break
                assert time.monotonic() < deadline, text[-2000:]
                time.sleep(0.2)
            assert receiver.spans.empty()
        finally:
            proxy.stop()
    finally:
        receiver.close()
