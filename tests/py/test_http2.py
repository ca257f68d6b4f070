"""HTTP/2 clients through mcplb in front of the SDK servers py-a and py-b: curl with
`--http2-prior-knowledge` (h2c on the plain listener) and `--http2` over TLS (ALPN h2, a test CA
made with openssl), and httpx's HTTP/2 client (the `h2` package) running ten streaming tool
calls and a GET stream at once over one connection, as a browser would."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import Backend, Proxy, make_pki, start_proxy_file

ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "h2", "version": "0"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def _config(backends: list[Backend], extra: str = "") -> str:
    urls = ", ".join(f'"{b.url}"' for b in backends)
    return (
        '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n\n'
        f"{extra}"
        '[admin]\nlisten = "127.0.0.1:0"\n\n'
        f'[[servers]]\nname = "pyh2"\npath = "/mcp"\nbackends = [{urls}]\n'
    )


def counters(proxy: Proxy) -> dict:
    return httpx.get(f"http://{proxy.admin_address()}/stats", timeout=10).json()["counters"]


def wait_counters(proxy: Proxy, want: dict[str, int]) -> dict:
    """Waits (statistics are folded in once a second) until the counters reach `want`."""
    deadline = time.monotonic() + 15
    while True:
        c = counters(proxy)
        if all(c.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            return c
        time.sleep(0.2)


@pytest.fixture(scope="module")
def h2_proxies(backends: list[Backend], tmp_path_factory: pytest.TempPathFactory):
    """mcplb on a plain listener and on a TLS one, each in front of py-a and py-b."""
    d = tmp_path_factory.mktemp("h2")
    ca, cert, key = make_pki(d)
    plain = d / "mcplb-h2c.toml"
    plain.write_text(_config(backends))
    tls = d / "mcplb-h2-tls.toml"
    tls.write_text(_config(backends, f'[proxy.tls]\ncert = "{cert}"\nkey = "{key}"\n\n'))
    p, t = start_proxy_file(plain), start_proxy_file(tls)
    yield p, t, ca
    p.stop()
    t.stop()


def _curl() -> str:
    curl = shutil.which("curl")
    assert curl, "curl is needed for the HTTP/2 tests (Debian: apt-get install curl)"
    features = subprocess.run([curl, "-V"], capture_output=True, text=True, timeout=10).stdout
    assert "HTTP2" in features, f"this curl has no HTTP/2 support:\n{features}"
    return curl


class Answer:
    def __init__(self, raw: str) -> None:
        head, _, self.body = raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.status_line = lines[0]
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def messages(self) -> list[dict]:
        """The JSON-RPC messages of the body: one JSON document or SSE `data:` lines."""
        if "text/event-stream" in self.headers.get("content-type", ""):
            return [json.loads(line[5:]) for line in self.body.splitlines() if line.startswith("data:") and line[5:].strip()]
        return [json.loads(self.body)] if self.body.strip() else []


def curl_mcp(mode: str, url: str, ca: Path, body: dict | None = None, sid: str | None = None,
             method: str | None = None) -> Answer:
    args = [_curl(), "-sS", "-i", "-N", "--max-time", "60", "-H", f"accept: {ACCEPT}"]
    args += ["--http2-prior-knowledge"] if mode == "h2c" else ["--http2", "--cacert", str(ca)]
    if sid:
        args += ["-H", f"mcp-session-id: {sid}"]
    if body is not None:
        args += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    if method:
        args += ["-X", method]
    # Bytes, not text: universal newlines would turn the head's CRLFs into LFs.
    out = subprocess.run([*args, url], capture_output=True, timeout=90)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    a = Answer(out.stdout.decode())
    # The whole exchange was HTTP/2 (ALPN chose h2 over TLS; prior knowledge on h2c).
    assert a.status_line.startswith("HTTP/2 "), a.status_line
    return a


@pytest.mark.parametrize("mode", ["h2c", "tls"])
def test_curl_session_over_http2(h2_proxies, mode: str) -> None:
    plain, tls, ca = h2_proxies
    proxy = plain if mode == "h2c" else tls
    port = proxy.addr.rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}/mcp" if mode == "h2c" else f"https://localhost:{port}/mcp"

    init = curl_mcp(mode, url, ca, INIT)
    assert init.status == 200, init.body
    sid = init.headers.get("mcp-session-id")
    assert sid, init.headers
    (msg,) = init.messages()
    backend = msg["result"]["serverInfo"]["name"]
    assert backend in ("py-a", "py-b")
    assert curl_mcp(mode, url, ca, INITIALIZED, sid).status == 202

    tools = curl_mcp(mode, url, ca, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
    names = {t["name"] for t in tools.messages()[-1]["result"]["tools"]}
    assert {"add", "whoami", "slow_progress"} <= names

    # A streaming tool call: its progress notifications, then the result, as SSE events.
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "slow_progress", "arguments": {"steps": 3, "delay": 0.1},
                       "_meta": {"progressToken": "p3"}}}
    streamed = curl_mcp(mode, url, ca, call, sid)
    assert "text/event-stream" in streamed.headers["content-type"]
    msgs = streamed.messages()
    progress = [m for m in msgs if m.get("method") == "notifications/progress"]
    assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
    assert msgs[-1]["id"] == 3 and msgs[-1]["result"]["content"][0]["text"] == "done"

    # The session sticks to its backend across requests (and connections).
    who = curl_mcp(mode, url, ca, {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                   "params": {"name": "whoami", "arguments": {}}}, sid)
    assert who.messages()[-1]["result"]["content"][0]["text"] == backend

    # DELETE ends it: the next request with its id is refused as an unknown session.
    assert curl_mcp(mode, url, ca, None, sid, method="DELETE").status == 200
    gone = curl_mcp(mode, url, ca, {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, sid)
    assert gone.status == 404, gone.body

    c = wait_counters(proxy, {"h2_streams": 7})
    assert c["h2_streams"] == 7 and c["h2_connections"] == 7, c


@pytest.fixture
def h2c_proxy(backends: list[Backend], tmp_path: Path):
    config = tmp_path / "mcplb-h2-many.toml"
    config.write_text(_config(backends))
    proxy = start_proxy_file(config)
    yield proxy
    proxy.stop()


@pytest.mark.anyio
async def test_httpx_ten_streaming_calls_and_a_get_stream_on_one_connection(h2c_proxy: Proxy) -> None:
    url = h2c_proxy.url
    calls = 10
    # Every stream waits here once its answer has begun, so all eleven are provably open at
    # once on the one connection before any finishes (no timing involved).
    all_open = asyncio.Barrier(calls + 1)
    async with httpx.AsyncClient(http1=False, http2=True, timeout=60) as c:
        init = await c.post(url, json=INIT, headers={"accept": ACCEPT})
        assert init.http_version == "HTTP/2" and init.status_code == 200, init.text
        sid = init.headers["mcp-session-id"]
        headers = {"accept": ACCEPT, "mcp-session-id": sid}
        assert (await c.post(url, json=INITIALIZED, headers=headers)).status_code == 202

        async def get_stream() -> None:
            async with c.stream("GET", url, headers={"accept": "text/event-stream", "mcp-session-id": sid}) as r:
                assert r.http_version == "HTTP/2" and r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                await asyncio.wait_for(all_open.wait(), 30)
            # Leaving the block resets the stream: mcplb closes its upstream GET.

        async def call(i: int) -> list[int]:
            body = {"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
                    "params": {"name": "slow_progress", "arguments": {"steps": 3, "delay": 0.2},
                               "_meta": {"progressToken": f"t{i}"}}}
            seen: list[int] = []
            async with c.stream("POST", url, json=body, headers=headers) as r:
                assert r.http_version == "HTTP/2" and r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                waited = False
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("method") == "notifications/progress":
                        assert msg["params"]["progressToken"] == f"t{i}"
                        seen.append(msg["params"]["progress"])
                        if not waited:
                            waited = True
                            await asyncio.wait_for(all_open.wait(), 30)
                    elif msg.get("id") == 100 + i:
                        assert msg["result"]["content"][0]["text"] == "done"
                        seen.append(0)
            return seen

        results = await asyncio.gather(get_stream(), *(call(i) for i in range(calls)))
    for seen in results[1:]:
        assert seen == [1, 2, 3, 0], seen
    # One connection carried them all: initialize, initialized, the GET stream, ten calls.
    c = wait_counters(h2c_proxy, {"h2_connections": 1, "h2_streams": calls + 3})
    assert c["h2_connections"] == 1 and c["h2_streams"] == calls + 3, c
    assert c["h2_protocol_errors"] == 0, c
