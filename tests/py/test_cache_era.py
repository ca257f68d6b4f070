"""The response cache (`[servers.cache]`) over the era bridge: 2026-07-28 clients (raw HTTP, as
the Python SDK speaks 2025 only) in front of `cache_server.py`, a 2025-era server (it answers
`server/discover` with "method not found", so mcplb bridges through a backend session) that
sends no caching hints, so the group's `default_ttl` applies.

A bridged list is served from the cache to the next caller (the backend sees one), in the
2026-07-28 shape (`resultType`), and never to a 2025 client, whose own answers keep theirs; a
`list_changed` or `resources/updated` in a bridged call's SSE answer evicts; `server/discover`
and a read-only tool named in the config are kept; a request with `inputResponses` is never
answered from the cache; `private` answers stay with their identity; a caller's policy filters
a bridged list (from the backend or the cache).
"""

from __future__ import annotations

import time
from itertools import count as numbers

import httpx2
import pytest
from conftest import free_port, start_proxy_file
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from test_cache import counting_backend, counts, digest, message

pytestmark = pytest.mark.anyio

ALICE, BOB = "alice-era-key", "bob-era-key"
MODERN = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
}
LEGACY = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
IDS = numbers(1)


def meta(caps: dict | None = None) -> dict:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": caps or {},
    }


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory):
    """mcplb (one worker: one core's cache and backend sessions) with cached groups in front
    of one counting 2025-era backend."""
    d = tmp_path_factory.mktemp("cache-era")
    with counting_backend(d) as up:
        proxy_port, admin = free_port(), free_port()
        keys = (
            f'[servers.auth]\napi_keys = [{{ sha256 = "{digest(ALICE)}", identity = "alice" }},'
            f' {{ sha256 = "{digest(BOB)}", identity = "bob" }}]\n'
        )
        config = d / "mcplb-cache-era.toml"
        config.write_text(
            f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\nworkers = 1\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
            # No hints from the backend: the group's defaults.
            f'[[servers]]\nname = "plain"\npath = "/plain"\nbackends = ["{up}/plain"]\n'
            "[servers.health]\nenabled = false\n"
            '[servers.cache]\ndefault_ttl = "60s"\ndefault_scope = "public"\n'
            'tools = ["lookup", "scan"]\ntool_ttl = "60s"\ntool_scope = "public"\n'
            # The same, its tool list on an SSE stream (relayed event by event).
            f'[[servers]]\nname = "stream"\npath = "/stream"\nbackends = ["{up}/stream"]\n'
            "[servers.health]\nenabled = false\n"
            '[servers.cache]\ndefault_ttl = "60s"\ndefault_scope = "public"\n'
            # Private by default: per identity.
            f'[[servers]]\nname = "priv"\npath = "/priv"\nbackends = ["{up}/private-era"]\n'
            "[servers.health]\nenabled = false\n"
            f"{keys}"
            '[servers.cache]\ndefault_ttl = "60s"\n'
            # A public list under a policy: alice sees two tools, bob all.
            f'[[servers]]\nname = "ruled"\npath = "/ruled"\nbackends = ["{up}/ruled-era"]\n'
            "[servers.health]\nenabled = false\n"
            f"{keys}"
            '[servers.cache]\ndefault_ttl = "60s"\ndefault_scope = "public"\n'
            '[[policies]]\nserver = "ruled"\neffect = "allow"\nidentities = ["alice"]\ntools = ["lookup", "scan"]\n'
            '[[policies]]\nserver = "ruled"\neffect = "allow"\nidentities = ["bob"]\ntools = ["*"]\n'
            # A 2025-era server (with sessions) that lists a tool only to clients that declare
            # elicitation; public by the group's default.
            f'[[servers]]\nname = "shaped"\npath = "/shaped"\nbackends = ["{up}/shaped"]\n'
            "[servers.health]\nenabled = false\n"
            '[servers.cache]\ndefault_ttl = "60s"\ndefault_scope = "public"\n'
            # A 2026-07-28 server whose answers are public; read-only tools kept.
            f'[[servers]]\nname = "modern-pub"\npath = "/modern-pub"\nbackends = ["{up}/modern-public"]\nera = "2026"\n'
            "[servers.health]\nenabled = false\n"
            '[servers.cache]\ntools = ["lookup", "roll"]\ntool_ttl = "60s"\ntool_scope = "public"\n'
            # A 2026-07-28 server whose lists are private.
            f'[[servers]]\nname = "modern"\npath = "/modern"\nbackends = ["{up}/modern-private"]\nera = "2026"\n'
            "[servers.health]\nenabled = false\n"
            f"{keys}"
            "[servers.cache]\n"
        )
        proxy = start_proxy_file(config)
        yield {"base": f"http://{proxy.addr}", "backend": up, "admin": f"http://127.0.0.1:{admin}"}
        proxy.stop()


def modern(
    url: str, method: str, params: dict | None = None, key: str | None = None, caps: dict | None = None
) -> dict:
    """A 2026-07-28 request (no session, its envelope in `_meta`, declaring `caps`): the result."""
    rid = next(IDS)
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**(params or {}), "_meta": meta(caps)}}
    headers = {**MODERN, "mcp-method": method, **({"x-api-key": key} if key else {})}
    name = (params or {}).get("name") or (params or {}).get("uri")
    if name:
        headers["mcp-name"] = name
    r = httpx2.post(url, json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    answer = message(r)
    assert answer["id"] == rid and "result" in answer, r.text
    return answer["result"]


def legacy(url: str, method: str, params: dict | None = None) -> dict:
    """A 2025-06-18 request outside any session (the backend issues none): the result."""
    rid = next(IDS)
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
    r = httpx2.post(url, json=body, headers=LEGACY, timeout=30)
    assert r.status_code == 200, r.text
    answer = message(r)
    assert answer["id"] == rid and "result" in answer, r.text
    return answer["result"]


def names(result: dict) -> set[str]:
    return {t["name"] for t in result["tools"]}


def metric(b: dict, name: str) -> float:
    text = httpx2.get(f"{b['admin']}/metrics", timeout=10).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def reaches(b: dict, name: str, want: float) -> float:
    """A counter once it reaches `want` (the worker folds its statistics once a second), or
    what it is after 10 s."""
    deadline = time.monotonic() + 10
    while (got := metric(b, name)) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


ALL = {"lookup", "scan", "change", "touch"}


def test_a_bridged_list_is_cached_in_its_era_until_list_changed(bridged) -> None:
    url = f"{bridged['base']}/plain"
    first = modern(url, "tools/list")
    assert names(first) == ALL and first["resultType"] == "complete", first
    again = modern(url, "tools/list")
    assert again == first
    assert counts(bridged).get("/plain tools/list") == 1, counts(bridged)

    # A 2025 client of the same group: its own answer, in its own shape, kept apart.
    old = legacy(url, "tools/list")
    assert names(old) == ALL and "resultType" not in old, old
    assert legacy(url, "tools/list") == old
    assert counts(bridged).get("/plain tools/list") == 2, counts(bridged)
    # ...and the 2026-07-28 one is still the 2026-07-28 shape.
    assert modern(url, "tools/list")["resultType"] == "complete"
    assert counts(bridged).get("/plain tools/list") == 2, counts(bridged)

    # A bridged call whose SSE answer carries tools/list_changed: both eras' lists go.
    changed = modern(url, "tools/call", {"name": "change", "arguments": {}})
    assert changed["content"][0]["text"] == "changed", changed
    assert modern(url, "tools/list")["resultType"] == "complete"
    assert counts(bridged).get("/plain tools/list") == 3, counts(bridged)
    assert "resultType" not in legacy(url, "tools/list")
    assert counts(bridged).get("/plain tools/list") == 4, counts(bridged)
    modern(url, "tools/list")
    legacy(url, "tools/list")
    assert counts(bridged).get("/plain tools/list") == 4, counts(bridged)


async def test_a_2025_sdk_client_is_not_served_the_bridged_shape(bridged) -> None:
    url = f"{bridged['base']}/stream"
    # The 2026-07-28 client fills the cache first, through the relayed SSE answer.
    first = modern(url, "tools/list")
    assert names(first) == ALL and first["resultType"] == "complete", first
    assert modern(url, "tools/list") == first
    assert counts(bridged).get("/stream tools/list") == 1, counts(bridged)
    async with httpx2.AsyncClient(timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as c:
            listed = await c.list_tools()
            assert {t.name for t in listed.tools} == ALL
            assert {t.name for t in (await c.list_tools()).tools} == ALL
    # The SDK's revision is another key: one more list, then its own from the cache.
    assert counts(bridged).get("/stream tools/list") == 2, counts(bridged)
    assert modern(url, "tools/list") == first


def test_a_bridged_answer_is_kept_per_declared_capabilities(bridged) -> None:
    """The backend session mcplb opens carries what the request declares, and the backend
    shapes its list by it: a public entry made for one declaration never answers another."""
    url = f"{bridged['base']}/shaped"
    assert names(modern(url, "tools/list")) == ALL
    asks = {"elicitation": {}}
    assert names(modern(url, "tools/list", caps=asks)) == ALL | {"ask"}
    assert counts(bridged).get("/shaped tools/list") == 2, counts(bridged)
    # The same declarations again: both from the cache.
    assert names(modern(url, "tools/list")) == ALL
    assert names(modern(url, "tools/list", caps=asks)) == ALL | {"ask"}
    assert counts(bridged).get("/shaped tools/list") == 2, counts(bridged)


def test_reads_discover_and_read_only_tools_over_the_bridge(bridged) -> None:
    url = f"{bridged['base']}/plain"
    a, b = "res://cache/a", "res://cache/b"

    def read(uri: str) -> str:
        result = modern(url, "resources/read", {"uri": uri})
        assert result["resultType"] == "complete", result
        return result["contents"][0]["text"]

    assert (read(a), read(b)) == (f"{a}#1", f"{b}#1")
    assert (read(a), read(b)) == (f"{a}#1", f"{b}#1"), "both kept"
    # resources/updated in a bridged call's SSE answer evicts that resource's reads only.
    touched = modern(url, "tools/call", {"name": "touch", "arguments": {"uri": a}})
    assert touched["content"][0]["text"] == "touched", touched
    assert read(a) == f"{a}#2"
    assert read(b) == f"{b}#1"

    hits = metric(bridged, "mcplb_cache_hits_total")
    d1 = modern(url, "server/discover")
    d2 = modern(url, "server/discover")
    assert d1 == d2 and d1["supportedVersions"] == ["2026-07-28"], d1
    # The worker folds its statistics once a second.
    for _ in range(30):
        if metric(bridged, "mcplb_cache_hits_total") > hits:
            break
        time.sleep(0.2)
    assert metric(bridged, "mcplb_cache_hits_total") > hits

    # The list taught which tools only read: lookup is kept, scan is not.
    modern(url, "tools/list")
    before = counts(bridged)
    call = {"name": "lookup", "arguments": {"key": "era"}}
    first = modern(url, "tools/call", call)
    assert modern(url, "tools/call", call) == first and first["resultType"] == "complete", first
    scan = {"name": "scan", "arguments": {"key": "era"}}
    modern(url, "tools/call", scan)
    modern(url, "tools/call", scan)
    after = counts(bridged)
    assert after.get("/plain call lookup", 0) - before.get("/plain call lookup", 0) == 1, after
    assert after.get("/plain call scan", 0) - before.get("/plain call scan", 0) == 2, after
    # A request carrying inputResponses is never answered from the cache.
    modern(url, "tools/call", {**call, "inputResponses": {}})
    assert counts(bridged).get("/plain call lookup", 0) - after.get("/plain call lookup", 0) == 1


def test_a_private_bridged_list_stays_with_its_identity(bridged) -> None:
    url = f"{bridged['base']}/priv"
    assert names(modern(url, "tools/list", key=ALICE)) == ALL
    assert names(modern(url, "tools/list", key=ALICE)) == ALL
    assert counts(bridged).get("/private-era tools/list") == 1, counts(bridged)
    assert names(modern(url, "tools/list", key=BOB)) == ALL
    assert counts(bridged).get("/private-era tools/list") == 2, counts(bridged)
    assert names(modern(url, "tools/list", key=BOB)) == ALL
    assert counts(bridged).get("/private-era tools/list") == 2, counts(bridged)


def test_a_bridged_list_is_filtered_by_the_callers_policy(bridged) -> None:
    url = f"{bridged['base']}/ruled"
    # From the backend, then from the cache: each caller sees what its rules allow.
    assert names(modern(url, "tools/list", key=ALICE)) == {"lookup", "scan"}
    assert names(modern(url, "tools/list", key=BOB)) == ALL
    assert names(modern(url, "tools/list", key=ALICE)) == {"lookup", "scan"}
    assert counts(bridged).get("/ruled-era tools/list") == 1, counts(bridged)


# --- the other way: a 2025-era client (in mcplb's own session) of a 2026-07-28 server ------


async def test_mcplbs_own_sessions_keep_a_2026_servers_private_lists(bridged) -> None:
    # mcplb's own session holds no backend state: a private list is kept per identity, as a
    # sessionless request's (a backend session's private answers are not kept).
    url = f"{bridged['base']}/modern"
    for key in (ALICE, ALICE, BOB):
        async with httpx2.AsyncClient(headers={"X-Api-Key": key}, timeout=30) as http:
            async with Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as c:
                assert {t.name for t in (await c.list_tools()).tools} == ALL
    assert counts(bridged).get("/modern-private tools/list") == 2, counts(bridged)
    # A 2026-07-28 client's list is of its own era.
    assert names(modern(url, "tools/list", key=ALICE)) == ALL
    assert counts(bridged).get("/modern-private tools/list") == 3, counts(bridged)
    assert names(modern(url, "tools/list", key=ALICE)) == ALL
    assert counts(bridged).get("/modern-private tools/list") == 3, counts(bridged)


async def test_a_list_changed_on_the_listen_stream_evicts(tmp_path) -> None:
    # mcp_server.py (Python SDK, 2025 era) sends tools/list_changed on its session's GET
    # stream, which the bridge holds while a 2026-07-28 client listens (the SDK's 2026-07-28
    # client, its own cache off): that stream's notification evicts the cached list.
    import anyio
    from conftest import Backend
    from mcp.client.subscriptions import ToolsListChanged

    backend = Backend("py-cache", tmp_path)
    backend.start()
    admin = free_port()
    config = tmp_path / "mcplb-listen-cache.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\nworkers = 1\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[servers]]\nname = "py"\npath = "/mcp"\nbackends = ["{backend.url}"]\nera = "2025"\n'
        "[servers.health]\nenabled = false\n"
        '[servers.cache]\ndefault_ttl = "60s"\ndefault_scope = "public"\n'
    )
    proxy = start_proxy_file(config)
    b = {"admin": f"http://127.0.0.1:{admin}"}
    try:
        # The lists raw (one request each), the listen and the calls through the SDK.
        first = modern(proxy.url, "tools/list")
        assert modern(proxy.url, "tools/list") == first
        assert reaches(b, "mcplb_cache_hits_total", 1) == 1, "the second list is a hit"
        async with Client(proxy.url, mode="2026-07-28", read_timeout_seconds=30, cache=None) as c:
            async with c.listen(tools_list_changed=True) as sub:
                got: list[object] = []

                async def change_until_seen() -> None:
                    # Repeated: a notification sent before the backend's stream listens is lost.
                    while not got:
                        await c.call_tool("change_tools", {})
                        await anyio.sleep(0.3)

                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(change_until_seen)
                        got.append(await sub.__anext__())
                assert isinstance(got[0], ToolsListChanged), got
        # The kept list went stale: the next raw list (the SDK client's own lists are other
        # entries, as it declares other capabilities) finds it so and drops it (a notification
        # on no stream the cache watches would leave it fresh).
        modern(proxy.url, "tools/list")
        assert reaches(b, "mcplb_cache_evictions_total", 1) >= 1
    finally:
        proxy.stop()
        backend.stop()


async def test_mcplbs_own_sessions_keep_a_2026_servers_reads_and_tool_results(bridged) -> None:
    """A 2025-era client's resources/read and tools/call answered by a 2026-07-28 backend are
    kept as a 2026-07-28 client's are (the backend's hints; tool_ttl for a read-only tool), but
    not a call whose backend asked the client for input (its answer depends on that input)."""
    from mcp_types import ElicitResult

    url = f"{bridged['base']}/modern-pub"
    asked: list[str] = []

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={})

    for _ in range(2):
        async with Client(url, mode="legacy", read_timeout_seconds=30, cache=None, elicitation_callback=on_elicit) as c:
            # The list teaches mcplb which tools only read.
            assert "roll" in {t.name for t in (await c.list_tools()).tools}
            read = await c.read_resource("res://cache/a")
            assert read.contents[0].text == "res://cache/a#1", read
            assert text_of(await c.call_tool("lookup", {"key": "k"})) == "k#1"
    got = counts(bridged)
    assert got.get("/modern-public read res://cache/a") == 1, got
    assert got.get("/modern-public call lookup") == 1, got
    async with Client(url, mode="legacy", read_timeout_seconds=30, cache=None, elicitation_callback=on_elicit) as c:
        assert text_of(await c.call_tool("roll", {})) == "roll#1"
        assert text_of(await c.call_tool("roll", {})) == "roll#2"
    assert asked == ["Roll?", "Roll?"]
    assert counts(bridged).get("/modern-public call roll") == 2, counts(bridged)


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)
