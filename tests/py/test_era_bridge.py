"""The era bridge: a 2026-07-28 client (the Python SDK's `Client(mode="2026-07-28")`, stateless,
no initialize) in front of a 2025-era server (`@modelcontextprotocol/server-everything`, which
answers a request outside a session with 400 "Server not initialized").

mcplb opens a backend session for such requests (keyed by what their `_meta` declares), answers
`server/discover` from its `initialize`, sends the requests in it at the negotiated revision and
makes the answers what the 2026-07-28 wire requires (`resultType`, caching hints), SSE progress
streaming through. `era = "auto"` (the default) learns the backend's era with a probe;
`era_bridge = false` and `era = "2026"` pass requests as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from mcp_types import TextContent

from conftest import REPO, _stop, free_port, start_proxy_file, wait_port

pytestmark = pytest.mark.anyio

EVERYTHING_JS = REPO / "tests" / "ts" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
READ_TIMEOUT = 30.0
MODERN_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
}


def _meta(caps: object | None = None) -> dict:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {} if caps is None else caps,
    }


class Everything:
    """One server-everything process (Streamable HTTP, 2025 era) on a fixed port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        node = shutil.which("node")
        if node is None or not EVERYTHING_JS.is_file():
            pytest.fail(f"server-everything needs node and {EVERYTHING_JS} (cd tests/ts && npm ci)")
        self.node = node
        self.port = port or free_port()
        self.log_path = workdir / f"everything-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> "Everything":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.node, str(EVERYTHING_JS), "streamableHttp"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PORT": str(self.port)},
        )
        log.close()
        wait_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _config(workdir: Path, name: str, backend: Everything, extra: str = "") -> Path:
    path = workdir / f"mcplb-{name}.toml"
    path.write_text(
        "[proxy]\n"
        'listen = "127.0.0.1:0"\n'
        "workers = 2\n\n"
        "[[servers]]\n"
        f'name = "{name}"\n'
        'path = "/mcp"\n'
        f'backends = ["{backend.url}"]\n'
        f"{extra}"
        "[servers.health]\nenabled = false\n"
    )
    return path


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory):
    e = Everything(tmp_path_factory.mktemp("era")).start()
    yield e
    e.stop()


def _stdio_config(workdir: Path, mode: str) -> Path:
    node = shutil.which("node")
    if node is None or not EVERYTHING_JS.is_file():
        pytest.fail(f"server-everything needs node and {EVERYTHING_JS} (cd tests/ts && npm ci)")
    command = json.dumps([node, str(EVERYTHING_JS), "stdio"])
    path = workdir / f"mcplb-stdio-{mode}.toml"
    path.write_text(
        "[proxy]\n"
        'listen = "127.0.0.1:0"\n'
        "workers = 2\n\n"
        "[[servers]]\n"
        'name = "everything-stdio"\n'
        'path = "/mcp"\n'
        f'backends = [{{ command = {command}, mode = "{mode}" }}]\n'
    )
    return path


@pytest.fixture(scope="module", params=["http", "stdio-per-session", "stdio-shared"])
def bridged_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """mcplb in front of server-everything: over Streamable HTTP, or as a stdio command (the
    stdio bridge serves it as a 2025-era loopback HTTP backend: the same era bridge)."""
    workdir = tmp_path_factory.mktemp("era-lb")
    backend = None
    if request.param == "http":
        backend = Everything(workdir).start()
        config = _config(workdir, "everything", backend)
    else:
        config = _stdio_config(workdir, request.param.removeprefix("stdio-"))
    proxy = start_proxy_file(config)
    yield proxy.url
    proxy.stop()
    if backend is not None:
        backend.stop()


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def test_2026_client_lists_and_calls_tools_on_a_2025_server(bridged_url: str) -> None:
    async with Client(bridged_url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
        assert client.protocol_version == "2026-07-28"
        tools = await client.list_tools()
        assert {"echo", "get-sum", "trigger-long-running-operation"} <= {t.name for t in tools.tools}
        assert text_of(await client.call_tool("get-sum", {"a": 20, "b": 22})) == "The sum of 20 and 22 is 42."
        assert text_of(await client.call_tool("echo", {"message": "bridged"})) == "Echo: bridged"


async def test_2026_client_streams_progress_through_the_bridge(bridged_url: str) -> None:
    progress: list[tuple[float, float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((time.monotonic(), value, total))

    async with Client(bridged_url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
        result = await client.call_tool(
            "trigger-long-running-operation", {"duration": 1.5, "steps": 3}, progress_callback=on_progress
        )
    assert "Long running operation completed" in text_of(result)
    assert [p[1] for p in progress] == [1, 2, 3], progress
    assert all(p[2] == 3 for p in progress), progress


async def test_auto_client_discovers_the_2025_server_as_2026(bridged_url: str) -> None:
    # mode="auto" probes server/discover: mcplb answers it from the backend session's
    # initialize, so the client adopts 2026-07-28 instead of falling back to the handshake.
    async with Client(bridged_url, mode="auto", read_timeout_seconds=READ_TIMEOUT) as client:
        assert client.protocol_version == "2026-07-28"
        assert client.server_capabilities.tools is not None
        assert text_of(await client.call_tool("get-sum", {"a": 1, "b": 2})) == "The sum of 1 and 2 is 3."


def _rpc(url: str, method: str, params: dict | None = None, rid: object = 7) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {"_meta": _meta(), **(params or {})}}
    headers = {**MODERN_HEADERS, "mcp-method": method}
    if method == "tools/call":
        headers["mcp-name"] = (params or {}).get("name", "")
    return httpx.post(url, json=body, headers=headers, timeout=READ_TIMEOUT)


def _message(r: httpx.Response) -> dict:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                msg = json.loads(line[5:].strip())
                if "id" in msg:
                    return msg
        raise AssertionError(f"no answer in the stream: {r.text!r}")
    return r.json()


def test_raw_answers_are_2026_shaped_and_sessionless(bridged_url: str) -> None:
    d = _rpc(bridged_url, "server/discover", rid="d-1")
    assert d.status_code == 200, d.text
    assert "mcp-session-id" not in d.headers
    res = d.json()
    assert res["id"] == "d-1"
    assert res["result"]["supportedVersions"] == ["2026-07-28"]
    assert res["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-servers/everything"
    assert res["result"]["resultType"] == "complete"
    assert res["result"]["cacheScope"] == "private" and res["result"]["ttlMs"] == 0

    r = _rpc(bridged_url, "tools/list")
    assert r.status_code == 200, r.text
    assert "mcp-session-id" not in r.headers, "the backend session is mcplb's, never the client's"
    msg = _message(r)
    assert msg["id"] == 7
    assert msg["result"]["resultType"] == "complete"
    assert msg["result"]["ttlMs"] == 0 and msg["result"]["cacheScope"] == "private"
    call = _message(_rpc(bridged_url, "tools/call", {"name": "get-sum", "arguments": {"a": 2, "b": 3}}))
    assert call["result"]["resultType"] == "complete"
    assert "ttlMs" not in call["result"]


def test_bad_meta_is_refused_with_a_reason(bridged_url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"_meta": _meta(caps=3)}}
    r = httpx.post(bridged_url, json=body, headers={**MODERN_HEADERS, "mcp-method": "tools/list"}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["id"] == 9 and err["error"]["code"] == -32602
    assert "clientCapabilities" in err["error"]["message"]


async def test_backend_restart_reopens_the_bridged_session(tmp_path: Path) -> None:
    # The backend forgets mcplb's session (a restart): it answers 404, and mcplb opens a new
    # session and sends the request again (the backend ran nothing).
    backend = Everything(tmp_path).start()
    proxy = start_proxy_file(_config(tmp_path, "restart", backend, 'era = "2025"\n'))
    try:
        async with Client(proxy.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
            assert text_of(await client.call_tool("get-sum", {"a": 1, "b": 1})) == "The sum of 1 and 1 is 2."
            backend.stop()
            backend = Everything(tmp_path, port=backend.port).start()
            # mcplb peeks at a pooled connection idle for more than 500 ms before reusing it;
            # one to the old process taken sooner fails a tool call written to it (it may have
            # run: mcplb's retry rule, bridged or not), so let the pool's connections age.
            await anyio.sleep(0.6)
            assert "get-sum" in {t.name for t in (await client.list_tools()).tools}
            for _ in range(4):
                assert text_of(await client.call_tool("get-sum", {"a": 2, "b": 2})) == "The sum of 2 and 2 is 4."
    finally:
        proxy.stop()
        backend.stop()


@pytest.mark.parametrize("extra", ["era_bridge = false\n", 'era = "2026"\n'])
async def test_without_the_bridge_the_2025_server_refuses(tmp_path: Path, everything: Everything, extra: str) -> None:
    proxy = start_proxy_file(_config(tmp_path, "plain", everything, extra))
    try:
        with pytest.raises(Exception, match="not initialized|TaskGroup"):
            async with Client(proxy.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
                await client.list_tools()
        r = _rpc(proxy.url, "tools/list")
        assert r.status_code == 400 and "not initialized" in r.text.lower(), r.text
    finally:
        proxy.stop()


def _skip_shared(request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params.get("bridged_url") == "stdio-shared":
        pytest.skip(
            'mode = "shared": one process, initialized once by the stdio bridge, serves every '
            "session, so a session's declared capabilities (elicitation) do not reach it"
        )


async def test_elicitation_round_trip_through_input_required(
    bridged_url: str, request: pytest.FixtureRequest
) -> None:
    # server-everything asks its client for input (elicitation/create on the call's stream);
    # the 2026-07-28 client gets an input_required result with mcplb's sealed requestState,
    # answers through its callback and retries; mcplb hands the answer to the waiting call.
    _skip_shared(request)
    from mcp_types import ElicitResult

    asked: list[str] = []

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True, "integer": 7})

    async with Client(
        bridged_url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT, elicitation_callback=on_elicit
    ) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "trigger-elicitation-request" in tools, "the session mcplb opened declares elicitation"
        result = await client.call_tool("trigger-elicitation-request", {})
        assert asked == ["Please provide inputs for the following fields:"]
        text = text_of(result)
        assert "Ada Lovelace" in text and "accept" in text, text
        # Plain calls go on in the same session afterwards.
        assert text_of(await client.call_tool("get-sum", {"a": 1, "b": 1})) == "The sum of 1 and 1 is 2."


async def test_sampling_round_trip_through_input_required(
    bridged_url: str, request: pytest.FixtureRequest
) -> None:
    # server-everything asks its client to sample (sampling/createMessage on the call's
    # stream): the 2026-07-28 client gets it as an input_required round, answers through its
    # sampling callback, and the backend's tool returns what was sampled.
    _skip_shared(request)
    from mcp_types import CreateMessageResult

    prompts: list[str] = []

    async def on_sample(context, params) -> CreateMessageResult:
        prompts.append(params.messages[0].content.text)
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text="sampled by the test"), model="test-model"
        )

    async with Client(
        bridged_url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT, sampling_callback=on_sample
    ) as client:
        result = await client.call_tool("trigger-sampling-request", {"prompt": "say hi", "maxTokens": 10})
        assert len(prompts) == 1 and "say hi" in prompts[0], prompts
        assert "sampled by the test" in text_of(result), text_of(result)


def test_raw_input_required_round_trip_and_a_stale_state(bridged_url: str, request: pytest.FixtureRequest) -> None:
    # The wire of the round trip, and a requestState mcplb sealed for a call it no longer
    # holds: a JSON-RPC error with the reason, never a hang.
    _skip_shared(request)
    caps = {"elicitation": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 11,
        "method": "tools/call",
        "params": {"name": "trigger-elicitation-request", "arguments": {}, "_meta": _meta(caps)},
    }
    headers = {**MODERN_HEADERS, "mcp-method": "tools/call", "mcp-name": "trigger-elicitation-request"}
    first = _message(httpx.post(bridged_url, json=body, headers=headers, timeout=READ_TIMEOUT))
    assert first["result"]["resultType"] == "input_required", first
    state = first["result"]["requestState"]
    (key, req), = first["result"]["inputRequests"].items()
    assert req["method"] == "elicitation/create"
    answer = {key: {"action": "decline"}}
    retry = {**body, "id": 12, "params": {**body["params"], "inputResponses": answer, "requestState": state}}
    # New connections each time (httpx.post): with two workers, the retries land on either;
    # the waiting call's backend connection moves to the worker the retry reached.
    done = _message(httpx.post(bridged_url, json=retry, headers=headers, timeout=READ_TIMEOUT))
    assert done["id"] == 12 and done["result"]["resultType"] == "complete", done
    assert "decline" in json.dumps(done["result"]["content"]), done
    # The call was answered: the same state again is refused, with the reason (never a second
    # run of the call).
    again = _message(httpx.post(bridged_url, json=retry, headers=headers, timeout=READ_TIMEOUT))
    assert again["id"] == 12 and "answered already" in again["error"]["message"], again


# --- a 2025-era client in front of a 2026-07-28-only server --------------------------------

MODERN_SERVER = Path(__file__).resolve().parent / "modern_server.py"


@pytest.fixture(scope="module", params=["auto", "2026"])
def modern_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """mcplb (era = auto or "2026") in front of modern_server.py, which serves 2026-07-28 alone."""
    import sys

    workdir = tmp_path_factory.mktemp("era-modern")
    port = free_port()
    log = open(workdir / "modern.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, str(MODERN_SERVER), "--port", str(port), "--name", "modern"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    log.close()
    try:
        wait_port(port, timeout=30)
        config = workdir / "mcplb-modern.toml"
        config.write_text(
            "[proxy]\n"
            'listen = "127.0.0.1:0"\n'
            "workers = 2\n\n"
            "[[servers]]\n"
            'name = "modern"\n'
            'path = "/mcp"\n'
            f'backends = ["http://127.0.0.1:{port}/mcp"]\n'
            f'era = "{request.param}"\n'
            "[servers.health]\n"
            'method = "server/discover"\n'
        )
        proxy = start_proxy_file(config)
        yield proxy.url
        proxy.stop()
    finally:
        _stop(proc)


async def test_2025_client_lists_and_calls_tools_on_a_2026_server(modern_url: str) -> None:
    async with Client(modern_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "modern"
        tools = await client.list_tools()
        assert {"add", "whoami", "slow_progress"} <= {t.name for t in tools.tools}
        assert text_of(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert text_of(await client.call_tool("whoami", {})) == "modern"


async def test_2025_client_streams_progress_from_a_2026_server(modern_url: str) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(modern_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        result = await client.call_tool("slow_progress", {"steps": 3, "delay": 0.2}, progress_callback=on_progress)
    assert text_of(result) == "done"
    assert progress == [1, 2, 3]


def test_2025_session_on_a_2026_server_is_mcplbs_own(modern_url: str) -> None:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": "i",
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    r = httpx.post(modern_url, json=init, headers=headers, timeout=READ_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["protocolVersion"] == "2025-06-18", "the client's revision, as the spec negotiates"
    sid = r.headers["mcp-session-id"]
    s = {**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
    note = httpx.post(modern_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=s, timeout=10)
    assert note.status_code == 202
    ping = httpx.post(modern_url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=s, timeout=10)
    assert ping.json() == {"jsonrpc": "2.0", "id": 3, "result": {}}
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    answer = _message(httpx.post(modern_url, json=call, headers=s, timeout=READ_TIMEOUT))
    assert answer["id"] == 4 and answer["result"]["content"][0]["text"] == "5", answer
    # The GET stream is served from a subscriptions/listen (see the listen tests below).
    with httpx.stream("GET", modern_url, headers={**s, "accept": "text/event-stream"}, timeout=10) as get:
        assert get.status_code == 200 and get.headers["content-type"].startswith("text/event-stream")
    assert httpx.delete(modern_url, headers=s, timeout=10).status_code == 200
    # A session id mcplb did not seal is unknown, as on any server.
    bad = httpx.post(modern_url, json=call, headers={**s, "mcp-session-id": "nope"}, timeout=10)
    assert bad.status_code in (400, 404), bad.text


async def test_2025_client_answers_a_2026_servers_input_requests(modern_url: str) -> None:
    # modern_server.py's `introduce` answers input_required twice: an elicitation and roots/list
    # in one round, then sampling. mcplb sends each as a server-to-client request on the call's
    # SSE answer, collects the legacy client's POSTed answers, retries the call with
    # inputResponses and the server's requestState, and ends the stream with the result.
    from mcp_types import CreateMessageResult, ElicitResult, ListRootsResult, Root
    from mcp_types import TextContent as Text

    seen: list[str] = []

    async def on_elicit(context, params) -> ElicitResult:
        seen.append(f"elicit:{params.message}")
        return ElicitResult(action="accept", content={"name": "Ada"})

    async def on_roots(context) -> ListRootsResult:
        seen.append("roots")
        return ListRootsResult(roots=[Root(uri="file:///work/ada", name="ada")])

    async def on_sample(context, params) -> CreateMessageResult:
        seen.append(f"sample:{params.messages[0].content.text}")
        return CreateMessageResult(role="assistant", content=Text(type="text", text="roses"), model="m")

    async with Client(
        modern_url,
        mode="legacy",
        read_timeout_seconds=READ_TIMEOUT,
        elicitation_callback=on_elicit,
        list_roots_callback=on_roots,
        sampling_callback=on_sample,
    ) as client:
        assert client.protocol_version == "2025-11-25"
        result = await client.call_tool("introduce", {})
        assert text_of(result) == "Ada|file:///work/ada|roses", result
        assert sorted(seen[:2]) == ["elicit:Who is calling?", "roots"], seen
        assert seen[2:] == ["sample:A line for Ada"], seen
        # Plain calls go on in the same session.
        assert text_of(await client.call_tool("add", {"a": 1, "b": 2})) == "3"


def test_2025_client_input_request_refused_ends_the_call_with_a_reason(modern_url: str) -> None:
    # The raw wire: the call's answer is an SSE stream of mcplb's requests; an error answer
    # from the client ends the call with a JSON-RPC error under the call's id, never a hang.
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    caps = {"elicitation": {}, "roots": {}, "sampling": {}}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": caps, "clientInfo": {"name": "raw", "version": "1"}},
    }
    r = httpx.post(modern_url, json=init, headers=headers, timeout=READ_TIMEOUT)
    s = {**headers, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    call = {"jsonrpc": "2.0", "id": "call-1", "method": "tools/call", "params": {"name": "introduce", "arguments": {}}}
    with httpx.Client(timeout=READ_TIMEOUT) as http, httpx.Client(timeout=READ_TIMEOUT) as other:
        with http.stream("POST", modern_url, json=call, headers=s) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            asked: list[dict] = []
            final = None
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:].strip())
                if "method" in msg:
                    asked.append(msg)
                    if len(asked) == 2:
                        # Another connection (perhaps another worker) carries the answers.
                        for a in asked:
                            if a["method"] == "roots/list":
                                answer = {"jsonrpc": "2.0", "id": a["id"], "result": {"roots": []}}
                            else:
                                answer = {"jsonrpc": "2.0", "id": a["id"], "error": {"code": -1, "message": "user said no"}}
                            assert other.post(modern_url, json=answer, headers=s).status_code == 202
                elif "id" in msg:
                    final = msg
    assert {a["method"] for a in asked} == {"elicitation/create", "roots/list"}, asked
    assert all(a["id"].startswith("mcplb-ask-") for a in asked), asked
    assert final is not None and final["id"] == "call-1", final
    assert "user said no" in final["error"]["message"], final


# --- subscriptions/listen <-> the GET stream ------------------------------------------------


@pytest.fixture(scope="module")
def py_2025_url(tmp_path_factory: pytest.TempPathFactory):
    """mcplb (era = "2025") in front of mcp_server.py (Python SDK, handshake era, sessions with
    a GET stream), whose `change_tools` sends tools/list_changed on its session's GET stream."""
    from conftest import Backend

    workdir = tmp_path_factory.mktemp("era-listen")
    backend = Backend("py2025", workdir)
    backend.start()
    config = workdir / "mcplb-listen.toml"
    config.write_text(
        "[proxy]\n"
        'listen = "127.0.0.1:0"\n'
        "workers = 2\n\n"
        "[[servers]]\n"
        'name = "py2025"\n'
        'path = "/mcp"\n'
        f'backends = ["{backend.url}"]\n'
        'era = "2025"\n'
        "[servers.health]\nenabled = false\n"
    )
    proxy = start_proxy_file(config)
    yield proxy.url
    proxy.stop()
    backend.stop()


async def test_2026_client_listens_through_a_2025_sessions_get_stream(py_2025_url: str) -> None:
    # The SDK's 2026-07-28 client opens subscriptions/listen; mcplb serves it from the GET
    # stream of the backend session it holds for this client's declaration (acknowledgment
    # first, then the asked-for notifications stamped with the listen's id). A call in that
    # session makes the backend announce a tool list change.
    from mcp.client.subscriptions import ToolsListChanged

    async with Client(py_2025_url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
        async with client.listen(tools_list_changed=True, prompts_list_changed=True) as sub:
            assert sub.honored.tools_list_changed is True
            got: list[object] = []

            async def touch_until_seen() -> None:
                # Repeated: a notification sent before the backend's stream listens is lost.
                while not got:
                    assert text_of(await client.call_tool("change_tools", {})) == "changed"
                    await anyio.sleep(0.3)

            with anyio.fail_after(READ_TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(touch_until_seen)
                    got.append(await sub.__anext__())
            assert isinstance(got[0], ToolsListChanged), got
        # The listen's end leaves the client's other requests working.
        assert text_of(await client.call_tool("add", {"a": 2, "b": 2})) == "4"


async def test_2026_client_listens_to_resource_updates_of_a_2025_server(tmp_path: Path, everything: Everything) -> None:
    # A 2026-07-28 client's listen with a resource subscription, in front of a 2025-era server
    # that offers resources.subscribe (server-everything): mcplb subscribes in the backend
    # session and relays the session's notifications/resources/updated for that URI.
    from mcp.client.subscriptions import ResourceUpdated

    uri = "demo://resource/dynamic/text/1"
    # One worker: server-everything sends its simulated updates to the session of the call
    # that turned them on, and each worker holds its own backend sessions (the listen and the
    # call share one only on the same worker; a real server's updates go to every session
    # subscribed to the resource).
    config = _config(tmp_path, "subscribe", everything, 'era = "2025"\n')
    config.write_text(config.read_text().replace("workers = 2", "workers = 1"))
    proxy = start_proxy_file(config)
    try:
        async with Client(proxy.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
            async with client.listen(resource_subscriptions=[uri]) as sub:
                assert list(sub.honored.resource_subscriptions or []) == [uri], sub.honored
                # The backend sends updates of subscribed resources every 5 s once asked to,
                # in the session the listen shares with this client's calls.
                on = text_of(await client.call_tool("toggle-subscriber-updates", {}))
                assert "Started" in on, on
                try:
                    with anyio.fail_after(READ_TIMEOUT):
                        event = await sub.__anext__()
                finally:
                    await client.call_tool("toggle-subscriber-updates", {})
                assert isinstance(event, ResourceUpdated) and event.uri == uri, event
    finally:
        proxy.stop()


async def test_2025_client_get_stream_from_a_2026_servers_listen(modern_url: str) -> None:
    # A 2025-era client's GET stream, in mcplb's own session, is served from a
    # subscriptions/listen mcplb opens on the 2026-07-28-only server: the server's
    # tools/list_changed (published by `change_tools`) reaches the client's message handler.
    changed = anyio.Event()

    async def on_message(message) -> None:
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__ or "list_changed" in str(message):
            changed.set()

    async with Client(
        modern_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT, message_handler=on_message
    ) as client:
        # The SDK opens the GET stream after initialize; give it a moment to be listening.
        for _ in range(50):
            await anyio.sleep(0.1)
            assert text_of(await client.call_tool("change_tools", {})) == "changed"
            if changed.is_set():
                break
        assert changed.is_set(), "tools/list_changed never reached the 2025-era client's GET stream"


async def test_2025_client_subscribes_to_a_resource_of_a_2026_server(modern_url: str) -> None:
    # A 2025-era client's resources/subscribe in mcplb's session for a 2026-07-28-only server
    # (which has no such method) is answered by mcplb, and the listen behind the session's GET
    # stream opens again asking for that resource's updates: the server's resources/updated
    # reaches the client; after resources/unsubscribe, it no longer does.
    uri = "info://name"
    updated: list[str] = []

    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        if "ResourceUpdated" in type(root).__name__:
            updated.append(str(root.params.uri))

    async def touched_unseen() -> bool:
        """Touches the resource: whether no update came within 1.5 s."""
        seen = len(updated)
        assert text_of(await client.call_tool("touch_resource", {"uri": uri})) == "touched"
        await anyio.sleep(1.5)
        return len(updated) == seen

    async with Client(
        modern_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT, message_handler=on_message
    ) as client:
        await client.subscribe_resource(uri)
        # The GET stream opens after initialize, its listen again after the subscribe.
        with anyio.fail_after(READ_TIMEOUT):
            while await touched_unseen():
                pass
        assert set(updated) == {uri}, updated
        await client.unsubscribe_resource(uri)
        with anyio.fail_after(READ_TIMEOUT):
            while not await touched_unseen():
                pass


def test_raw_get_stream_from_a_2026_servers_listen(modern_url: str) -> None:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    r = httpx.post(modern_url, json=init, headers=headers, timeout=READ_TIMEOUT)
    s = {**headers, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "change_tools", "arguments": {}}}
    import threading

    stop = threading.Event()

    def touch() -> None:
        # Repeated until seen: a notification sent before the server's listen is registered is lost.
        while not stop.wait(0.3):
            httpx.post(modern_url, json=call, headers=s, timeout=READ_TIMEOUT)

    toucher = threading.Thread(target=touch, daemon=True)
    seen = None
    try:
        with httpx.Client(timeout=READ_TIMEOUT) as http:
            with http.stream("GET", modern_url, headers={**s, "accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                toucher.start()
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        seen = json.loads(line[5:].strip())
                        break
    finally:
        stop.set()
        if toucher.is_alive():
            toucher.join(timeout=READ_TIMEOUT)
    assert seen is not None and seen["method"] == "notifications/tools/list_changed", seen


# --- the end of the backend sessions mcplb holds ---------------------------------------------


def _sessions_seen(backend) -> tuple[set[str], set[str]]:
    """The session ids the backend saw in POSTs, and those it got a DELETE for (its --log-http)."""
    posted: set[str] = set()
    deleted: set[str] = set()
    for line in backend.log_path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "HTTP" and parts[3].startswith("session="):
            sid = parts[3].removeprefix("session=")
            if sid == "-":
                continue
            (deleted if parts[1] == "DELETE" else posted).add(sid)
    return posted, deleted


async def test_bridged_backend_sessions_end_with_a_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mcplb ends a backend session it drops with a DELETE, as a 2025-era client would: one
    # idle past its limit (shortened here with a debug build's test hook), and at shutdown.
    from conftest import Backend, require_test_hooks

    require_test_hooks(tmp_path, "MCPLB_TEST_ERA_IDLE_MS")
    backend = Backend("ending", tmp_path, ("--log-http",))
    backend.start()

    def config(name: str) -> Path:
        path = tmp_path / f"mcplb-{name}.toml"
        path.write_text(
            "[proxy]\n"
            'listen = "127.0.0.1:0"\n'
            "workers = 1\n\n"
            "[[servers]]\n"
            f'name = "{name}"\n'
            'path = "/mcp"\n'
            f'backends = ["{backend.url}"]\n'
            'era = "2025"\n'
            "[servers.health]\nenabled = false\n"
        )
        return path

    try:
        monkeypatch.setenv("MCPLB_TEST_ERA_IDLE_MS", "1000")
        idle = start_proxy_file(config("idle"))
        try:
            async with Client(idle.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
                assert text_of(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
            posted, deleted = _sessions_seen(backend)
            assert posted, "no backend session was opened"
            for _ in range(200):
                posted, deleted = _sessions_seen(backend)
                if posted <= deleted:
                    break
                await anyio.sleep(0.1)
            assert posted <= deleted, f"idle backend sessions not ended with a DELETE: {posted - deleted}"
            # The next request opens a new session.
            async with Client(idle.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
                assert text_of(await client.call_tool("add", {"a": 2, "b": 2})) == "4"
            assert _sessions_seen(backend)[0] - posted, "no new backend session after the idle one ended"
        finally:
            idle.stop()

        monkeypatch.delenv("MCPLB_TEST_ERA_IDLE_MS")
        before = _sessions_seen(backend)[0]
        lasting = start_proxy_file(config("shutdown"))
        try:
            async with Client(lasting.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
                assert text_of(await client.call_tool("add", {"a": 3, "b": 3})) == "6"
            opened = _sessions_seen(backend)[0] - before
            assert opened, "no backend session was opened"
            assert not opened & _sessions_seen(backend)[1], "ended before mcplb dropped it"
        finally:
            # SIGTERM: a graceful shutdown, given time on a busy machine (stop() kills after 5 s).
            assert lasting.proc is not None
            lasting.proc.terminate()
            try:
                lasting.proc.wait(timeout=30)
            finally:
                lasting.stop()
        assert opened <= _sessions_seen(backend)[1], "the backend session was not ended at shutdown"
    finally:
        backend.stop()
