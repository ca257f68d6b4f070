"""The era bridge's input rounds across replicas: two mcplb processes with the same session keys
in front of one 2025-era backend (tests/py/mcp_server.py, Python SDK, whose `ask_name` and
`ask_twice` tools elicit mid-call and note each start, answer and cancellation in `calls()`).

A 2026-07-28 client's call that the backend asks input for gets an `input_required` result whose
sealed `requestState` carries what a replay needs. The retry reaching the mcplb that holds the
waiting call resumes it (the tool runs once); the retry reaching the other one replays the call
there, answering the backend's questions from the state and the retry (the tool runs again; the
first run, abandoned, is cancelled on its backend when its wait runs out).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import Backend, Proxy, require_test_hooks, start_proxy_file

TIMEOUT = 30.0
KEY = "7e" * 32
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "replay-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
}
# How long a bridged call waits for its retry in the first mcplb (a debug build's test hook).
PARK_MS = 2500


def _config(workdir: Path, name: str, backend: Backend) -> Path:
    path = workdir / f"mcplb-{name}.toml"
    path.write_text(
        "[proxy]\n"
        'listen = "127.0.0.1:0"\n'
        "workers = 2\n"
        f'session_key = "{KEY}"\n\n'
        '[admin]\nlisten = "127.0.0.1:0"\n\n'
        f'[audit]\nlog = "{workdir / f"audit-{name}.jsonl"}"\n\n'
        "[[servers]]\n"
        'name = "py"\n'
        'path = "/mcp"\n'
        f'backends = ["{backend.url}"]\n'
        'era = "2025"\n'
        "[servers.health]\nenabled = false\n\n"
        # A virtual server over it: its member's bridged calls replay the same way.
        "[[servers]]\n"
        'name = "vs"\n'
        'path = "/vs"\n'
        "[[servers.members]]\n"
        'server = "py"\n'
    )
    return path


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory):
    """(A, B): two mcplb processes sharing session keys, one backend behind both."""
    workdir = tmp_path_factory.mktemp("era-replay")
    backend = Backend("replay", workdir)
    backend.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("MCPLB_TEST_ERA_PARK_MS", str(PARK_MS))
    try:
        a = start_proxy_file(_config(workdir, "a", backend))
        b = start_proxy_file(_config(workdir, "b", backend))
    finally:
        mp.undo()
    a.audit = workdir / "audit-a.jsonl"
    b.audit = workdir / "audit-b.jsonl"
    yield a, b
    a.stop()
    b.stop()
    backend.stop()


@pytest.fixture
def park_hook(tmp_path: Path) -> None:
    """For a test that waits for A's parked call to be abandoned: that takes `PARK_MS` only with
    the hook `MCPLB_TEST_ERA_PARK_MS`, which a release build lacks (its calls wait the full
    time, past these tests' timeouts): skipped there."""
    require_test_hooks(tmp_path, "MCPLB_TEST_ERA_PARK_MS")


def _message(r: httpx.Response) -> dict:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                msg = json.loads(line[5:].strip())
                if "id" in msg and "method" not in msg:
                    return msg
        raise AssertionError(f"no answer in the stream: {r.text!r}")
    return r.json()


def _call(proxy: Proxy, rid: int, tool: str, extra: dict | None = None, path: str = "/mcp") -> dict:
    params = {"name": tool, "arguments": {}, "_meta": META, **(extra or {})}
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    url = proxy.url.removesuffix("/mcp") + path
    # A new connection each time: with two workers, either may take it.
    return _message(httpx.post(url, json=body, headers={**HEADERS, "mcp-name": tool}, timeout=TIMEOUT))


def _answer(result: dict, name: str) -> dict:
    """The retry's params answering the (one) input request of `result` with `name`."""
    assert result["resultType"] == "input_required", result
    (key, req), = result["inputRequests"].items()
    assert req["method"] == "elicitation/create", req
    return {
        "inputResponses": {key: {"action": "accept", "content": {"name": name}}},
        "requestState": result["requestState"],
    }


def _text(msg: dict) -> str:
    assert "result" in msg, msg
    return msg["result"]["content"][0]["text"]


def _calls(proxy: Proxy) -> list[str]:
    text = _text(_call(proxy, 99, "calls"))
    return [c for c in text.split(",") if c]


def _eventually(get, done, timeout: float = 15.0):
    """What `get()` gives once `done` says it is what is waited for, or at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _counter(proxy: Proxy, name: str, want: int) -> int:
    """The counter `name` once it reaches `want` (statistics fold in once a second)."""
    stats = lambda: httpx.get(f"http://{proxy.admin_address()}/stats", timeout=10).json()["counters"][name]
    return _eventually(stats, lambda got: got >= want)


def _audited(proxy: Proxy, era_input: str) -> list[dict]:
    """The audit lines of `proxy` whose retry went on as `era_input` (written within 250 ms)."""

    def lines() -> list[dict]:
        text = proxy.audit.read_text() if proxy.audit.exists() else ""
        return [json.loads(l) for l in text.splitlines() if l.strip()]

    return [l for l in _eventually(lines, lambda got: any(l.get("era_input") == era_input for l in got)) if l.get("era_input") == era_input]


def _wait_for(proxy: Proxy, entry: str, count: int) -> list[str]:
    """The backend's calls once `entry` is among them `count` times."""
    return _eventually(lambda: _calls(proxy), lambda calls: calls.count(entry) >= count)


def test_retry_to_the_same_replica_resumes_the_waiting_call(replicas) -> None:
    a, _ = replicas
    before = _calls(a)
    first = _call(a, 1, "ask_name")
    done = _call(a, 2, "ask_name", _answer(first["result"], "Ada"))
    assert done["id"] == 2 and _text(done) == "Hello Ada", done
    # One run of the tool, answered: no second call reached the backend.
    new = _calls(a)[len(before):]
    assert new == ["ask_name", "ask_name:answered"], new
    assert _counter(a, "era_inputs_resumed", 1) >= 1
    line = _audited(a, "resumed")[0]
    assert line["method"] == "tools/call" and line["name"] == "ask_name" and line["decision"] == "allowed", line


@pytest.mark.usefixtures("park_hook")
def test_retry_to_another_replica_replays_the_call(replicas) -> None:
    a, b = replicas
    before = _calls(a)
    first = _call(a, 3, "ask_name")
    done = _call(b, 4, "ask_name", _answer(first["result"], "Grace"))
    assert done["id"] == 4 and _text(done) == "Hello Grace", done
    assert _counter(b, "era_inputs_replayed", 1) >= 1
    assert [l["name"] for l in _audited(b, "replayed")][:1] == ["ask_name"]
    # B ran the call again and answered its question from the retry; the run A holds still
    # waits, until its wait runs out: then A cancels it on the backend, so it never goes on.
    calls = _wait_for(a, "ask_name:cancelled", before.count("ask_name:cancelled") + 1)
    new = calls[len(before):]
    assert sorted(new) == sorted(["ask_name", "ask_name", "ask_name:answered", "ask_name:cancelled"]), new
    assert _counter(a, "era_calls_abandoned", 1) >= 1
    # The state was answered: the same retry again at B is refused, with the reason.
    again = _call(b, 5, "ask_name", _answer(first["result"], "Grace"))
    assert "answered already" in again["error"]["message"], again


@pytest.mark.usefixtures("park_hook")
def test_retry_through_a_virtual_server_to_another_replica_replays_the_call(replicas) -> None:
    a, b = replicas
    before = _calls(a)
    replayed = _counter(b, "era_inputs_replayed", 0)
    first = _call(a, 31, "py_ask_name", path="/vs")
    done = _call(b, 32, "py_ask_name", _answer(first["result"], "Hedy"), path="/vs")
    assert done["id"] == 32 and _text(done) == "Hello Hedy", done
    assert _counter(b, "era_inputs_replayed", replayed + 1) >= replayed + 1
    # The first run, waiting at A, is cancelled when its wait runs out.
    calls = _wait_for(a, "ask_name:cancelled", before.count("ask_name:cancelled") + 1)
    new = calls[len(before):]
    assert sorted(new) == sorted(["ask_name", "ask_name", "ask_name:answered", "ask_name:cancelled"]), new


@pytest.mark.usefixtures("park_hook")
def test_later_rounds_replay_the_earlier_answers(replicas) -> None:
    a, b = replicas
    before = _calls(a)
    first = _call(a, 6, "ask_twice")
    # Round one answered at A (the waiting call goes on and asks again) ...
    second = _call(a, 7, "ask_twice", _answer(first["result"], "Ada"))
    assert second["result"]["resultType"] == "input_required", second
    # ... round two at B: the call replays there, its first question answered from the state.
    done = _call(b, 8, "ask_twice", _answer(second["result"], "Grace"))
    assert _text(done) == "Hello Ada and Grace", done
    calls = _wait_for(a, "ask_twice:cancelled", before.count("ask_twice:cancelled") + 1)
    new = calls[len(before):]
    assert new.count("ask_twice") == 2 and new.count("ask_twice:cancelled") == 1, new


def test_a_state_for_another_call_is_refused(replicas) -> None:
    a, b = replicas
    first = _call(a, 9, "ask_name")
    retry = _answer(first["result"], "Ada")
    body = {
        "jsonrpc": "2.0",
        "id": 10,
        "method": "tools/call",
        "params": {"name": "ask_twice", "arguments": {}, "_meta": META, **retry},
    }
    r = httpx.post(b.url, json=body, headers={**HEADERS, "mcp-name": "ask_twice"}, timeout=TIMEOUT)
    assert "issued for another call" in _message(r)["error"]["message"], r.text
