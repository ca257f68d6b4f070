"""HTTP/3 clients through mcplb in front of the SDK servers py-a and py-b: aioquic's QUIC and
HTTP/3 (an implementation independent of quinn and the h3 crate mcplb uses) against a real
mcplb on loopback with `[proxy.http3]`: initialize, a streaming tool call whose progress
arrives before its result, the session across requests and across QUIC connections, DELETE,
ten calls at once on one connection, a cancelled call's stream reset closing its upstream,
address validation by Retry, and `Alt-Svc` on the HTTP/1.1 and HTTP/2 answers. Then the
limits: `max_connections_per_ip` over TCP and QUIC together, the stream flood guards, field
sections over `max_header_list_size`, a reload changing HTTP/3 settings, and a returning
client skipping the Retry with its NEW_TOKEN token."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from conftest import Backend, Proxy, make_pki, start_proxy_file
from deploy_support import load_bin
from test_http2 import ACCEPT, INIT, INITIALIZED
H3_REQUEST_CANCELLED = 0x10C
H3_EXCESSIVE_LOAD = 0x107
CONNECTION_REFUSED = 0x2


class Stream:
    """One request stream: its answer's head, then its body as it arrives."""

    def __init__(self, client: "H3Client", stream_id: int) -> None:
        self.client = client
        self.id = stream_id
        self.events: asyncio.Queue[H3Event] = asyncio.Queue()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    async def head(self) -> "Stream":
        ev = await asyncio.wait_for(self.events.get(), 30)
        assert isinstance(ev, HeadersReceived), ev
        for k, v in ev.headers:
            if k == b":status":
                self.status = int(v)
            else:
                self.headers[k.decode()] = v.decode()
        self.ended = ev.stream_ended
        return self

    async def chunks(self):
        """The body's pieces, as the DATA frames carry them."""
        while not self.ended:
            ev = await asyncio.wait_for(self.events.get(), 30)
            if isinstance(ev, DataReceived):
                self.ended = ev.stream_ended
                if ev.data:
                    yield ev.data
            elif isinstance(ev, HeadersReceived):  # trailers
                self.ended = ev.stream_ended

    async def body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def cancel(self) -> None:
        """What an HTTP/3 client does to cancel a request (RFC 9114 §4.1.1): reset the sending
        part, stop the receiving part."""
        quic = self.client._quic
        try:
            quic.reset_stream(self.id, H3_REQUEST_CANCELLED)
        except Exception:  # already finished sending: nothing to reset
            pass
        quic.stop_stream(self.id, H3_REQUEST_CANCELLED)
        self.client.transmit()


class H3Client(QuicConnectionProtocol):
    """A small HTTP/3 client over aioquic's H3Connection."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._streams: dict[int, Stream] = {}
        self.authority = b"localhost"

    def quic_event_received(self, event: QuicEvent) -> None:
        for ev in self._http.handle_event(event):
            s = self._streams.get(getattr(ev, "stream_id", -1))
            if s is not None and isinstance(ev, (HeadersReceived, DataReceived)):
                s.events.put_nowait(ev)

    async def request(self, method: str, body: dict | None = None, sid: str | None = None,
                      accept: str = ACCEPT, extra: tuple[tuple[bytes, bytes], ...] = ()) -> Stream:
        stream_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", self.authority),
                   (b":path", b"/mcp"), (b"accept", accept.encode()), *extra]
        if sid:
            headers.append((b"mcp-session-id", sid.encode()))
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        s = Stream(self, stream_id)
        self._streams[stream_id] = s
        self._http.send_headers(stream_id, headers, end_stream=data is None)
        if data is not None:
            self._http.send_data(stream_id, data, end_stream=True)
        self.transmit()
        return await s.head()


def messages(s: Stream, raw: bytes) -> list[dict]:
    """The JSON-RPC messages of a body: one JSON document or SSE `data:` lines."""
    text = raw.decode()
    if "text/event-stream" in s.headers.get("content-type", ""):
        return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return [json.loads(text)] if text.strip() else []


def _config(
    backends: list[Backend], cert: Path, key: Path, proxy: str = "", http3: str = "", tls: str = ""
) -> str:
    urls = ", ".join(f'"{b.url}"' for b in backends)
    return (
        f'[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n{proxy}\n'
        f'[proxy.tls]\ncert = "{cert}"\nkey = "{key}"\n{tls}\n'
        f'[proxy.http3]\nlisten = "127.0.0.1:0"\n{http3}\n'
        '[admin]\nlisten = "127.0.0.1:0"\n\n'
        f'[[servers]]\nname = "pyh3"\npath = "/mcp"\nbackends = [{urls}]\n'
    )


def _line(proxy: Proxy, pattern: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(proxy.stdout):
            if m := re.search(pattern, line):
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"mcplb printed no line matching {pattern!r}")


def stats(proxy: Proxy) -> dict:
    admin = _line(proxy, r"admin on http://([^/]+)/")
    return httpx.get(f"http://{admin}/stats", timeout=10).json()


def wait_stats(proxy: Proxy, done) -> dict:
    """Waits (statistics are folded in once a second) until `done(stats)` holds."""
    deadline = time.monotonic() + 15
    while True:
        s = stats(proxy)
        if done(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["auto", "legacy"])
def h3_proxy(request: pytest.FixtureRequest, backends: list[Backend], tmp_path_factory: pytest.TempPathFactory):
    """mcplb with HTTP/3 on each of monoio's drivers (auto: io_uring where the kernel has it; epoll)."""
    d = tmp_path_factory.mktemp("h3")
    ca, cert, key = make_pki(d)
    config = d / "mcplb-h3.toml"
    config.write_text(_config(backends, cert, key))
    proxy = start_proxy_file(config, ("--driver", request.param))
    udp = _line(proxy, r"HTTP/3 on udp://(\S+)")
    yield proxy, int(udp.rsplit(":", 1)[1]), ca
    proxy.stop()


def quic_config(ca: Path) -> QuicConfiguration:
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    c.load_verify_locations(str(ca))
    return c


@pytest.mark.anyio
async def test_session_and_streaming_call_over_http3(h3_proxy) -> None:
    proxy, port, ca = h3_proxy
    before = stats(proxy)["counters"]
    async with connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client) as c:
        init = await c.request("POST", INIT)
        assert init.status == 200, await init.body()
        sid = init.headers.get("mcp-session-id")
        assert sid, init.headers
        (msg,) = messages(init, await init.body())
        backend = msg["result"]["serverInfo"]["name"]
        assert backend in ("py-a", "py-b")
        ack = await c.request("POST", INITIALIZED, sid)
        assert ack.status == 202 and await ack.body() == b""

        tools = await c.request("POST", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        names = {t["name"] for t in messages(tools, await tools.body())[-1]["result"]["tools"]}
        assert {"add", "whoami", "slow_progress"} <= names

        # A streaming tool call: each progress notification reaches the client as its own
        # piece of the stream, before the result (mcplb does not hold the SSE answer back).
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "slow_progress", "arguments": {"steps": 3, "delay": 0.3},
                           "_meta": {"progressToken": "p3"}}}
        s = await c.request("POST", call, sid)
        assert s.status == 200 and "text/event-stream" in s.headers["content-type"]
        raw = b""
        result_with_first_progress = None
        async for chunk in s.chunks():
            raw += chunk
            if result_with_first_progress is None and b"notifications/progress" in raw:
                result_with_first_progress = b'"result"' in raw
        msgs = messages(s, raw)
        progress = [m for m in msgs if m.get("method") == "notifications/progress"]
        assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
        assert msgs[-1]["id"] == 3 and msgs[-1]["result"]["content"][0]["text"] == "done"
        assert result_with_first_progress is False, "the SSE answer was held back until its end"

        who = await c.request("POST", {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                       "params": {"name": "whoami", "arguments": {}}}, sid)
        assert messages(who, await who.body())[-1]["result"]["content"][0]["text"] == backend

    # The session outlives the QUIC connection: a new one reaches the same backend, and
    # DELETE ends the session there.
    async with connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client) as c:
        who = await c.request("POST", {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                       "params": {"name": "whoami", "arguments": {}}}, sid)
        assert who.status == 200
        assert messages(who, await who.body())[-1]["result"]["content"][0]["text"] == backend
        gone = await c.request("DELETE", None, sid)
        assert gone.status == 200, await gone.body()
        await gone.body()
        after = await c.request("POST", {"jsonrpc": "2.0", "id": 6, "method": "tools/list"}, sid)
        assert after.status == 404, await after.body()
        await after.body()

    s = wait_stats(proxy, lambda s: s["counters"]["h3_streams"] - before["h3_streams"] >= 8)
    c2 = s["counters"]
    assert c2["h3_streams"] - before["h3_streams"] == 8, c2
    assert c2["h3_connections"] - before["h3_connections"] == 2, c2
    # Each new client was sent a Retry first: its address was validated before mcplb sent
    # it anything larger than what it had sent.
    assert c2["h3_retries"] - before["h3_retries"] >= 2, c2


@pytest.mark.anyio
async def test_ten_calls_at_once_on_one_connection_and_a_cancelled_one(h3_proxy) -> None:
    proxy, port, ca = h3_proxy
    async with connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client) as c:
        init = await c.request("POST", INIT)
        sid = init.headers["mcp-session-id"]
        await init.body()
        await (await c.request("POST", INITIALIZED, sid)).body()

        # The session's GET stream, open beside the calls.
        get = await c.request("GET", None, sid, accept="text/event-stream")
        assert get.status == 200 and get.headers["content-type"].startswith("text/event-stream"), get.headers

        # All ten wait here once their answer has begun, so they are provably open at once.
        calls = 10
        all_open = asyncio.Barrier(calls)

        async def call(i: int) -> list[int]:
            body = {"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
                    "params": {"name": "slow_progress", "arguments": {"steps": 3, "delay": 0.2},
                               "_meta": {"progressToken": f"t{i}"}}}
            s = await c.request("POST", body, sid)
            assert s.status == 200
            seen: list[int] = []
            raw = b""
            async for chunk in s.chunks():
                raw += chunk
                if not seen and b"notifications/progress" in raw:
                    seen.append(-1)
                    await asyncio.wait_for(all_open.wait(), 30)
            for m in messages(s, raw):
                if m.get("method") == "notifications/progress":
                    assert m["params"]["progressToken"] == f"t{i}"
                    seen.append(m["params"]["progress"])
                elif m.get("id") == 100 + i:
                    assert m["result"]["content"][0]["text"] == "done"
                    seen.append(0)
            return seen

        results = await asyncio.gather(*(call(i) for i in range(calls)))
        assert all(r == [-1, 1, 2, 3, 0] for r in results), results

        # Closing the GET stream closes its upstream GET.
        get.cancel()
        gauges_before = wait_stats(proxy, lambda st: st["gauges"].get("sse_streams_open", 0) == 0)["gauges"]
        assert gauges_before.get("sse_streams_open", 0) == 0, gauges_before

        # A long call, cancelled once it streams: mcplb closes its upstream connection (the
        # SSE gauge drops to zero long before the backend would have finished: 20 s).
        long = {"jsonrpc": "2.0", "id": 200, "method": "tools/call",
                "params": {"name": "slow_progress", "arguments": {"steps": 100, "delay": 0.2},
                           "_meta": {"progressToken": "long"}}}
        s = await c.request("POST", long, sid)
        assert s.status == 200
        async for chunk in s.chunks():
            if b"notifications/progress" in chunk:
                break
        open_now = wait_stats(proxy, lambda st: st["gauges"].get("sse_streams_open", 0) == 1)
        assert open_now["gauges"]["sse_streams_open"] == 1, open_now["gauges"]
        s.cancel()
        closed = wait_stats(proxy, lambda st: st["gauges"].get("sse_streams_open", 0) == 0)
        assert closed["gauges"]["sse_streams_open"] == 0, closed["gauges"]

        # The connection and the session go on.
        who = await c.request("POST", {"jsonrpc": "2.0", "id": 201, "method": "tools/call",
                                       "params": {"name": "whoami", "arguments": {}}}, sid)
        assert who.status == 200 and messages(who, await who.body())[-1]["result"]["content"][0]["text"]


@pytest.mark.anyio
async def test_connection_survives_the_client_moving_to_new_ports(h3_proxy) -> None:
    """Connection migration: the client's address changes four times (a new UDP socket each
    time, as after a NAT rebinding) and its QUIC connection goes on. The kernel's own
    SO_REUSEPORT hash would send the new 4-tuple to a random worker (with two workers, all four
    moves would stay on the owner 1 time in 16); mcplb steers by connection id."""
    proxy, port, ca = h3_proxy
    before = stats(proxy)["counters"]
    loop = asyncio.get_running_loop()
    async with connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client) as c:
        init = await c.request("POST", INIT)
        sid = init.headers["mcp-session-id"]
        (msg,) = messages(init, await init.body())
        backend = msg["result"]["serverInfo"]["name"]
        ports = set()
        for i in range(4):
            old = c._transport
            # A dual-stack socket, as aioquic's connect() makes (it sends to IPv4-mapped
            # addresses).
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            await loop.create_datagram_endpoint(lambda: c, sock=sock)
            ports.add(c._transport.get_extra_info("sockname")[1])
            old.close()
            c.change_connection_id()
            who = await c.request("POST", {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                                           "params": {"name": "whoami", "arguments": {}}}, sid)
            assert who.status == 200
            assert messages(who, await who.body())[-1]["result"]["content"][0]["text"] == backend
        assert len(ports) == 4
    after = wait_stats(proxy, lambda s: s["counters"]["h3_streams"] - before["h3_streams"] >= 5)["counters"]
    assert after["h3_streams"] - before["h3_streams"] == 5, after
    assert after["h3_connections"] - before["h3_connections"] == 1, after


def test_alt_svc_on_http1_and_http2_answers(h3_proxy) -> None:
    proxy, port, ca = h3_proxy
    tcp = proxy.addr.rsplit(":", 1)[1]
    ctx = ssl.create_default_context(cafile=str(ca))
    for http2 in (False, True):
        with httpx.Client(http2=http2, verify=ctx, timeout=30) as c:
            r = c.post(f"https://localhost:{tcp}/mcp", json=INIT, headers={"accept": ACCEPT})
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert r.status_code == 200, r.text
            assert r.headers.get("alt-svc") == f'h3=":{port}"; ma=86400', r.headers


def test_mcplb_load_h3_runs_sessions_and_calls_over_quic(h3_proxy) -> None:
    """`mcplb-load h3` (the release build's HTTP/3 training, bench/instructions.sh LOADER=h3):
    each connection initializes a session and calls a tool; with --calls-per-connection 3 each
    is replaced after 3 calls. What it reports is what mcplb counted."""
    proxy, port, _ = h3_proxy
    # Statistics are folded in once a second, up to 1.3 s after a request and later on a loaded
    # machine, each worker on its own: the earlier tests' requests first (two readings in a row
    # 1.5 s apart that agree; one such pair once let a late fold of an earlier session through).
    before = stats(proxy)["counters"]
    same = 0
    for _ in range(30):
        time.sleep(1.5)
        now = stats(proxy)["counters"]
        same = same + 1 if now == before else 0
        before = now
        if same == 2:
            break
    out = subprocess.run(
        [load_bin(), "h3", "--url", f"https://127.0.0.1:{port}/mcp", "--connections", "2", "--duration", "2s",
         "--tool", "add", "--args", '{"a":2,"b":3}', "--calls-per-connection", "3", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    j = json.loads(out.stdout.splitlines()[-1])
    assert j["ok"] >= 3 and j["errors"] == 0, j
    # A connection a session (initialize and notifications/initialized), 3 calls each but the
    # last of each virtual user's, cut by the end of the run.
    assert j["setup"] == 2 * j["connections"], j
    assert j["connections"] >= j["ok"] // 3 and j["connections"] > 2, j
    streams = j["ok"] + j["setup"]
    after = wait_stats(proxy, lambda s: s["counters"]["h3_streams"] - before["h3_streams"] >= streams)["counters"]
    assert after["h3_streams"] - before["h3_streams"] == streams, (before, after, j)
    assert after["h3_connections"] - before["h3_connections"] == j["connections"], (before, after, j)
    assert after["sessions_started"] - before["sessions_started"] == j["connections"], (before, after, j)


@pytest.fixture
def limits_proxy(backends: list[Backend], tmp_path: Path):
    """Starts mcplb with HTTP/3 and more `[proxy]` / `[proxy.http3]` lines; returns it, its
    UDP port, the CA and the config file."""
    started: list[Proxy] = []

    def start(proxy: str = "", http3: str = "", tls: str = ""):
        ca, cert, key = make_pki(tmp_path)
        config = tmp_path / "mcplb-h3-limits.toml"
        config.write_text(_config(backends, cert, key, proxy, http3, tls))
        p = start_proxy_file(config)
        started.append(p)
        udp = _line(p, r"HTTP/3 on udp://(\S+)")
        return p, int(udp.rsplit(":", 1)[1]), ca, config

    yield start
    for p in started:
        p.stop()


def h3_connect(port: int, ca: Path):
    return connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client)


async def initialize(c: H3Client) -> str:
    init = await c.request("POST", INIT)
    assert init.status == 200, await init.body()
    await init.body()
    return init.headers["mcp-session-id"]


async def refused_with(port: int, ca: Path) -> int | None:
    """Connects; the error code of the CONNECTION_CLOSE that ended the handshake, or None when
    the connection was accepted."""
    async with connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client,
                       wait_connected=False) as c:
        c.transmit()
        try:
            await asyncio.wait_for(c.wait_connected(), 15)
        except ConnectionError:
            return c._quic._close_event.error_code
        return None


@pytest.mark.anyio
async def test_max_connections_per_ip_counts_quic_and_tcp_together(limits_proxy) -> None:
    proxy, port, ca, _ = limits_proxy(proxy="max_connections_per_ip = 3\n")
    tcp = proxy.addr.rsplit(":", 1)[1]
    web_url = f"https://localhost:{tcp}/mcp"
    before = stats(proxy)["counters"]
    # One TCP connection (kept alive by the client) and two QUIC ones: the address's three.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=30) as web:
        assert web.post(web_url, json=INIT, headers={"accept": ACCEPT}).status_code == 200
        async with h3_connect(port, ca) as a, h3_connect(port, ca) as b:
            await initialize(a)
            await initialize(b)
            # A fourth is refused in its handshake, after its address was validated (it was
            # sent a Retry first, like every new client).
            assert await refused_with(port, ca) == CONNECTION_REFUSED
            # The other three go on.
            assert web.post(web_url, json=INIT, headers={"accept": ACCEPT}).status_code == 200
            await initialize(a)
            await initialize(b)
        # Two closed: their slots come free once mcplb has forgotten them (after QUIC's
        # draining period), and a new connection is accepted.
        deadline = time.monotonic() + 20
        while (code := await refused_with(port, ca)) is not None and time.monotonic() < deadline:
            assert code == CONNECTION_REFUSED
            await asyncio.sleep(0.2)
        assert code is None
        assert web.post(web_url, json=INIT, headers={"accept": ACCEPT}).status_code == 200

    def grown(s: dict) -> dict:
        return {k: s["counters"][k] - before[k] for k in ("h3_connections_refused", "connections_refused", "h3_retries")}

    # Each worker folds its counters in once a second: wait for all of them.
    g = grown(wait_stats(proxy, lambda s: (g := grown(s))["h3_connections_refused"] >= 1
                         and g["connections_refused"] >= 1 and g["h3_retries"] >= 4))
    assert g["h3_connections_refused"] >= 1 and g["connections_refused"] >= 1, g
    # Every connection was sent a Retry: a, b, the refused one, the one after.
    assert g["h3_retries"] >= 4, g


@pytest.mark.anyio
async def test_stream_floods_are_refused_and_counted(limits_proxy) -> None:
    proxy, port, ca, _ = limits_proxy(http3="max_resets_per_second = 10\nmax_pings_per_second = 10\n"
                                      "max_migration_frames_per_second = 15\n")
    before = stats(proxy)["counters"]
    async with h3_connect(port, ca) as calm, h3_connect(port, ca) as flood:
        sid = await initialize(calm)
        await initialize(flood)
        # Forty requests, each cancelled as soon as it is sent (RESET_STREAM and STOP_SENDING),
        # well over ten a second.
        for _ in range(40):
            stream_id = flood._quic.get_next_available_stream_id()
            flood._http.send_headers(stream_id, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"localhost"),
                (b":path", b"/mcp"), (b"accept", ACCEPT.encode()), (b"content-type", b"application/json")])
            flood._quic.reset_stream(stream_id, H3_REQUEST_CANCELLED)
            flood._quic.stop_stream(stream_id, H3_REQUEST_CANCELLED)
        flood.transmit()
        await asyncio.wait_for(flood.wait_closed(), 15)
        assert flood._quic._close_event.error_code == H3_EXCESSIVE_LOAD, flood._quic._close_event
        # The other connection is served on.
        tools = await calm.request("POST", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        assert tools.status == 200
        assert messages(tools, await tools.body())[-1]["result"]["tools"]
        # Unidirectional streams of a reserved type (0x21), forty beyond HTTP/3's three, each
        # stopped by mcplb: streams thrown away as fast, the same flood.
        async with h3_connect(port, ca) as uni:
            await initialize(uni)
            for _ in range(40):
                stream_id = uni._quic.get_next_available_stream_id(is_unidirectional=True)
                uni._quic.send_stream_data(stream_id, b"\x21", end_stream=True)
            uni.transmit()
            await asyncio.wait_for(uni.wait_closed(), 15)
            assert uni._quic._close_event.error_code == H3_EXCESSIVE_LOAD, uni._quic._close_event
        # Forty PINGs, one a datagram.
        async with h3_connect(port, ca) as pings:
            await initialize(pings)
            for i in range(40):
                pings._quic.send_ping(i)
                pings.transmit()
                await asyncio.sleep(0.002)
            await asyncio.wait_for(pings.wait_closed(), 15)
            assert pings._quic._close_event.error_code == H3_EXCESSIVE_LOAD, pings._quic._close_event
        # Sixty changes of connection id, each retiring the last one (mcplb issues a new id
        # for each).
        async with h3_connect(port, ca) as mover:
            await initialize(mover)
            for _ in range(60):
                if mover._quic._close_event is not None:
                    break
                mover._quic.change_connection_id()
                mover.transmit()
                await asyncio.sleep(0.005)
            await asyncio.wait_for(mover.wait_closed(), 15)
            assert mover._quic._close_event.error_code == H3_EXCESSIVE_LOAD, mover._quic._close_event
        tools = await calm.request("POST", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, sid)
        assert tools.status == 200
        await tools.body()
    want = {"h3_rapid_resets": 2, "h3_ping_floods": 1, "h3_migration_floods": 1}

    def grown(s: dict) -> dict:
        return {k: s["counters"][k] - before[k] for k in want}

    # Each worker folds its counters in once a second: wait for all of them.
    assert grown(wait_stats(proxy, lambda s: grown(s) == want)) == want


@pytest.mark.anyio
async def test_field_section_over_the_limit_is_answered_431(limits_proxy) -> None:
    proxy, port, ca, _ = limits_proxy(http3="max_header_list_size = 2048\n")
    before = stats(proxy)["counters"]
    async with h3_connect(port, ca) as c:
        sid = await initialize(c)
        big = await c.request("POST", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid,
                              extra=((b"x-padding", b"a" * 4000),))
        assert big.status == 431
        await big.body()  # the stream ends
        # The connection goes on.
        tools = await c.request("POST", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, sid)
        assert tools.status == 200 and messages(tools, await tools.body())[-1]["result"]["tools"]
    s = wait_stats(proxy, lambda s: s["counters"]["h3_headers_too_large"] > before["h3_headers_too_large"])
    assert s["counters"]["h3_headers_too_large"] - before["h3_headers_too_large"] == 1, s["counters"]


@pytest.mark.anyio
async def test_reload_changes_http3_settings_for_new_connections(limits_proxy) -> None:
    proxy, port, ca, config = limits_proxy(http3='idle_timeout = "30s"\n')
    admin = _line(proxy, r"admin on http://([^/]+)/")
    async with h3_connect(port, ca) as old:
        assert old._quic._remote_max_idle_timeout == 30
        sid = await initialize(old)
        config.write_text(config.read_text().replace('idle_timeout = "30s"', 'idle_timeout = "12s"'))
        r = httpx.post(f"http://{admin}/reload", timeout=10)
        assert r.status_code == 200, r.text
        assert any(c.startswith("proxy.http3:") for c in r.json()["changes"]), r.text
        # A new connection gets the new setting...
        async with h3_connect(port, ca) as new:
            assert new._quic._remote_max_idle_timeout == 12
            await initialize(new)
        # ...and the one from before the reload goes on.
        tools = await old.request("POST", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        assert tools.status == 200 and messages(tools, await tools.body())[-1]["result"]["tools"]
    # Another UDP address needs a restart, as `proxy.listen` does: the reload is refused.
    text = config.read_text()
    config.write_text(text.replace('[proxy.http3]\nlisten = "127.0.0.1:0"', '[proxy.http3]\nlisten = "127.0.0.2:0"'))
    r = httpx.post(f"http://{admin}/reload", timeout=10)
    assert r.status_code == 400 and r.json()["errors"][0].startswith("proxy.http3.listen:"), r.text


@pytest.mark.anyio
async def test_a_returning_client_skips_the_retry_with_its_token(limits_proxy) -> None:
    proxy, port, ca, _ = limits_proxy()
    tokens: list[bytes] = []
    async with connect("127.0.0.1", port, configuration=quic_config(ca), create_protocol=H3Client,
                       token_handler=tokens.append) as c:
        await initialize(c)
        deadline = time.monotonic() + 10
        while not tokens and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert tokens, "mcplb sent no NEW_TOKEN"

    # Statistics are folded in once a second: wait for the first connection to show.
    s = wait_stats(proxy, lambda s: s["counters"]["h3_connections"] >= 1)["counters"]
    assert s["h3_connections"] == 1 and s["h3_retries"] == 1, s
    for retried in (False, True):
        # With the token: validated at once, no Retry. The same token again: it was used, so
        # the client gets a Retry (and is served all the same).
        cfg = quic_config(ca)
        cfg.token = tokens[0]
        async with connect("127.0.0.1", port, configuration=cfg, create_protocol=H3Client) as c:
            await initialize(c)
        want = 3 if retried else 2
        s = wait_stats(proxy, lambda s: s["counters"]["h3_connections"] >= want)["counters"]
        assert s["h3_connections"] == want, s
        assert s["h3_retries"] == (2 if retried else 1), s


@pytest.mark.anyio
async def test_a_certificate_the_watcher_swaps_in_serves_new_quic_connections(limits_proxy, tmp_path: Path) -> None:
    proxy, port, ca, _ = limits_proxy(tls='reload_interval = "100ms"\n')
    async with h3_connect(port, ca) as old:
        sid = await initialize(old)
        # A certificate from another CA replaces the files (each file renamed into place, as a
        # deploy does); no reload is asked for.
        next_dir = tmp_path / "next"
        next_dir.mkdir()
        next_ca, next_cert, next_key = make_pki(next_dir)
        for src, dst in ((next_key, tmp_path / "leaf.key"), (next_cert, tmp_path / "chain.pem")):
            tmp = dst.with_suffix(".new")
            tmp.write_bytes(src.read_bytes())
            tmp.replace(dst)
        # New QUIC connections get the new certificate: trusted by the new CA only.
        deadline = time.monotonic() + 15
        while True:
            try:
                async with h3_connect(port, next_ca) as new:
                    await initialize(new)
                break
            except (ConnectionError, asyncio.TimeoutError):
                assert time.monotonic() < deadline, "new QUIC connections never got the new certificate"
                await asyncio.sleep(0.2)
        with pytest.raises((ConnectionError, asyncio.TimeoutError)):
            async with h3_connect(port, ca) as stale:
                await initialize(stale)
        # The connection from before goes on with the certificate it started with.
        tools = await old.request("POST", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        assert tools.status == 200 and messages(tools, await tools.body())[-1]["result"]["tools"]
