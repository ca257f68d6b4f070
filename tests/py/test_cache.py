"""The response cache (`[servers.cache]`) with the official MCP Python SDK client through mcplb,
in front of `cache_server.py`, which counts every request it gets.

A `public` tool list is served from the cache to a second caller (the backend sees one
`tools/list`) until the backend's `notifications/tools/list_changed` evicts it; a `private`
one is shared by the same identity only, and never without one; a read-only, idempotent tool
named in the config is answered from the cache, and concurrent identical calls reach the
backend once, each caller getting the answer with its own id. Under a policy, a cached list is
filtered once per class of callers: two callers the same rules concern get the same bytes,
another class its own, until a `list_changed`. The admin port counts it all.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import HERE, free_port, start_proxy_file, wait_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

pytestmark = pytest.mark.anyio

ALICE, BOB, CAROL = "alice-cache-key", "bob-cache-key", "carol-cache-key"
# An older revision than the SDK speaks: the protocol version is part of the key.
ACCEPT = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-03-26"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@contextmanager
def counting_backend(d: Path):
    """cache_server.py on a free port (its output in `d`/backend.log): its base URL."""
    port = free_port()
    with (d / "backend.log").open("w") as log:
        backend = subprocess.Popen(
            [sys.executable, str(HERE / "cache_server.py"), "--port", str(port)], stdout=log, stderr=log
        )
        try:
            wait_port(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            backend.terminate()
            backend.wait(timeout=10)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory):
    """mcplb (one worker, so concurrent calls meet on one core) with three cached groups in
    front of one counting backend."""
    d = tmp_path_factory.mktemp("cache")
    with counting_backend(d) as up:
        proxy_port, admin = free_port(), free_port()
        config = d / "mcplb-cache.toml"
        config.write_text(
            f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\nworkers = 1\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[[servers]]\nname = "pub"\npath = "/pub"\nbackends = ["{up}/public"]\n'
            "[servers.health]\nenabled = false\n"
            '[servers.cache]\nmax_bytes = 1048576\ntools = ["lookup", "scan"]\ntool_ttl = "60s"\ntool_scope = "public"\n'
            f'[[servers]]\nname = "priv"\npath = "/priv"\nbackends = ["{up}/private"]\n'
            "[servers.health]\nenabled = false\n"
            f'[servers.auth]\napi_keys = [{{ sha256 = "{digest(ALICE)}", identity = "alice" }},'
            f' {{ sha256 = "{digest(BOB)}", identity = "bob" }}]\n'
            "[servers.cache]\n"
            f'[[servers]]\nname = "anon"\npath = "/anon"\nbackends = ["{up}/private"]\n'
            "[servers.health]\nenabled = false\n"
            "[servers.cache]\n"
            # Public lists on SSE streams that only mention the change notifications.
            f'[[servers]]\nname = "mentions"\npath = "/mentions"\nbackends = ["{up}/mentions"]\n'
            "[servers.health]\nenabled = false\n"
            "[servers.cache]\n"
            # A virtual server over the public group: its relayed notifications evict too.
            '[[servers]]\nname = "all"\npath = "/all"\n[[servers.members]]\nserver = "pub"\n'
            # And one over a group without a cache: its merged list follows the member's changes.
            f'[[servers]]\nname = "plain"\npath = "/plain"\nbackends = ["{up}/plain"]\n'
            "[servers.health]\nenabled = false\n"
            '[[servers]]\nname = "allnc"\npath = "/allnc"\n[[servers.members]]\nserver = "plain"\n'
            # A public list under a policy: alice and carol are one class, bob another.
            f'[[servers]]\nname = "ruled"\npath = "/ruled"\nbackends = ["{up}/ruled"]\n'
            "[servers.health]\nenabled = false\n"
            f'[servers.auth]\napi_keys = [{{ sha256 = "{digest(ALICE)}", identity = "alice" }},'
            f' {{ sha256 = "{digest(BOB)}", identity = "bob" }},'
            f' {{ sha256 = "{digest(CAROL)}", identity = "carol" }}]\n'
            "[servers.cache]\n"
            '[[policies]]\nserver = "ruled"\neffect = "allow"\nidentities = ["alice", "carol"]\ntools = ["lookup", "scan"]\n'
            '[[policies]]\nserver = "ruled"\neffect = "allow"\nidentities = ["bob"]\ntools = ["*"]\n'
            # The same policy without a response cache.
            f'[[servers]]\nname = "ruled-nc"\npath = "/ruled-nc"\nbackends = ["{up}/ruled-nc"]\n'
            "[servers.health]\nenabled = false\n"
            f'[servers.auth]\napi_keys = [{{ sha256 = "{digest(ALICE)}", identity = "alice" }},'
            f' {{ sha256 = "{digest(BOB)}", identity = "bob" }},'
            f' {{ sha256 = "{digest(CAROL)}", identity = "carol" }}]\n'
            '[[policies]]\nserver = "ruled-nc"\neffect = "allow"\nidentities = ["alice", "carol"]\ntools = ["lookup", "scan"]\n'
            '[[policies]]\nserver = "ruled-nc"\neffect = "allow"\nidentities = ["bob"]\ntools = ["*"]\n'
        )
        proxy = start_proxy_file(config)
        yield {"base": f"http://{proxy.addr}", "backend": up, "admin": f"http://127.0.0.1:{admin}"}
        proxy.stop()


def counts(c: dict) -> dict[str, int]:
    return httpx2.get(f"{c['backend']}/counts", timeout=10).json()


@asynccontextmanager
async def client(url: str, key: str | None = None):
    headers = {"X-Api-Key": key} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        # The SDK's own response cache is off: every list goes to mcplb.
        async with Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as c:
            yield c


async def tool_names(url: str, key: str | None = None) -> set[str]:
    async with client(url, key) as c:
        return {t.name for t in (await c.list_tools()).tools}


def message(r) -> dict:
    """The JSON-RPC response in an HTTP answer: its JSON body, or its SSE event with an id."""
    if r.headers["content-type"].startswith("application/json"):
        return r.json()
    data = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    return next(m for m in data if "id" in m)


def text(result) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def test_a_public_list_is_shared_until_list_changed(cached) -> None:
    url = f"{cached['base']}/pub"
    assert await tool_names(url) == {"lookup", "scan", "change", "touch"}
    assert await tool_names(url) == {"lookup", "scan", "change", "touch"}
    assert counts(cached).get("/public tools/list") == 1, counts(cached)

    # On the wire (another protocol revision: one more backend list), the cached answer
    # carries each request's own id, of its own type.
    for rid in ("x-1", 99):
        req = {"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": {}}
        r = httpx2.post(url, json=req, headers=ACCEPT, timeout=10)
        assert r.status_code == 200, r.text
        answer = message(r)
        assert answer["id"] == rid and len(answer["result"]["tools"]) == 4, r.text
    # The hit (99) is JSON, as the client accepts it (the backend answered on an SSE stream).
    assert r.headers["content-type"].startswith("application/json"), r.headers
    sse = httpx2.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
                      headers={**ACCEPT, "Accept": "text/event-stream"}, timeout=10)
    assert sse.headers["content-type"].startswith("text/event-stream"), sse.headers
    data = [line[5:].strip() for line in sse.text.splitlines() if line.startswith("data:")]
    assert len(data) == 1 and json.loads(data[0])["id"] == 5, sse.text
    assert counts(cached).get("/public tools/list") == 2, counts(cached)

    # The backend says its tools changed: the next list goes to it again.
    async with client(url) as c:
        assert text(await c.call_tool("change", {})) == "changed"
    assert await tool_names(url) == {"lookup", "scan", "change", "touch"}
    assert counts(cached).get("/public tools/list") == 3, counts(cached)
    assert await tool_names(url) == {"lookup", "scan", "change", "touch"}
    assert counts(cached).get("/public tools/list") == 3, counts(cached)


async def test_a_notification_only_mentioned_in_a_stream_evicts_nothing(cached) -> None:
    """The list's SSE answer carries a log message quoting `notifications/tools/list_changed`
    and a tool whose description (over 4 KiB: the event spreads over several reads) names it:
    neither is that notification, so the list stays cached."""
    url = f"{cached['base']}/mentions"
    assert await tool_names(url) == {"watch"}
    assert await tool_names(url) == {"watch"}
    assert counts(cached).get("/mentions tools/list") == 1, counts(cached)


async def test_a_list_changed_relayed_by_a_virtual_server_evicts_its_member(cached) -> None:
    url = f"{cached['base']}/pub"
    await tool_names(url)
    cached_now = counts(cached).get("/public tools/list")
    await tool_names(url)
    assert counts(cached).get("/public tools/list") == cached_now, counts(cached)
    # The change tool called through the virtual server: its answer's list_changed reaches
    # the client through the virtual server's relay, not the member group's forwarding.
    async with client(f"{cached['base']}/all") as c:
        assert text(await c.call_tool("pub_change", {})) == "changed"
    before = counts(cached).get("/public tools/list")
    await tool_names(url)
    assert counts(cached).get("/public tools/list") == before + 1, counts(cached)


async def test_a_virtual_servers_merged_list_follows_an_uncached_members_list_changed(cached) -> None:
    url = f"{cached['base']}/allnc"

    async def change_description() -> str:
        async with client(url) as c:
            return next(t.description or "" for t in (await c.list_tools()).tools if t.name.endswith("change"))

    first = await change_description()
    listed = counts(cached).get("/plain tools/list")
    assert await change_description() == first
    assert counts(cached).get("/plain tools/list") == listed, "the merged list is kept"
    # The member's list_changed (on the call's SSE answer, relayed by the virtual server)
    # evicts the merged list, though the member's group has no cache of its own.
    async with client(url) as c:
        assert text(await c.call_tool("plain_change", {})) == "changed"
    assert await change_description() != first
    assert counts(cached).get("/plain tools/list") == listed + 1, counts(cached)


async def test_a_private_list_never_crosses_identities(cached) -> None:
    url = f"{cached['base']}/priv"
    assert "lookup" in await tool_names(url, ALICE)
    assert "lookup" in await tool_names(url, ALICE)
    assert counts(cached).get("/private tools/list") == 1, counts(cached)
    assert "lookup" in await tool_names(url, BOB)
    assert counts(cached).get("/private tools/list") == 2, counts(cached)
    assert "lookup" in await tool_names(url, BOB)
    assert counts(cached).get("/private tools/list") == 2, counts(cached)
    # Without an identity a private answer is never shared.
    anon = f"{cached['base']}/anon"
    await tool_names(anon)
    await tool_names(anon)
    assert counts(cached).get("/private tools/list") == 4, counts(cached)


async def test_a_read_only_tool_is_cached_and_concurrent_calls_coalesce(cached) -> None:
    url = f"{cached['base']}/pub"
    results: list[str] = []
    ready = {"n": 0, "all": anyio.Event()}

    async def call(key: str, together: int = 1) -> None:
        async with client(url) as c:
            # The list teaches mcplb which tools only read.
            await c.list_tools()
            ready["n"] += 1
            if ready["n"] >= together:
                ready["all"].set()
            await ready["all"].wait()
            results.append(text(await c.call_tool("lookup", {"key": key})))

    # Four callers ready, then all call at once (the backend takes a second to answer).
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(call, "k1", 4)
    assert counts(cached).get("/public call lookup") == 1, (counts(cached), results)
    assert results == ["k1#1"] * 4, results
    await call("k1")
    await call("k2")
    assert counts(cached).get("/public call lookup") == 2, counts(cached)
    assert results[-2:] == ["k1#1", "k2#2"], results

    # A tool the config names but the server does not annotate is never cached.
    async with client(url) as c:
        await c.list_tools()
        await c.call_tool("scan", {"key": "s"})
        await c.call_tool("scan", {"key": "s"})
    assert counts(cached).get("/public call scan") == 2, counts(cached)

    stats = httpx2.get(f"{cached['admin']}/metrics", timeout=10).text
    metric = {line.split()[0]: float(line.split()[1]) for line in stats.splitlines() if line.startswith("mcplb_cache")}
    assert metric["mcplb_cache_hits_total"] >= 5, metric
    assert metric["mcplb_cache_coalesced_total"] >= 1, metric
    assert metric["mcplb_cache_misses_total"] >= 3, metric
    assert metric["mcplb_cache_evictions_total"] >= 1, metric
    assert metric["mcplb_cache_bytes"] > 0, metric


def test_resources_updated_evicts_only_that_resources_reads(cached) -> None:
    url = f"{cached['base']}/pub"

    def read(uri: str) -> str:
        req = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}
        r = httpx2.post(url, json=req, headers=ACCEPT, timeout=10)
        assert r.status_code == 200, r.text
        return message(r)["result"]["contents"][0]["text"]

    def touch(uri: str) -> None:
        req = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "touch", "arguments": {"uri": uri}}}
        r = httpx2.post(url, json=req, headers=ACCEPT, timeout=10)
        assert message(r)["result"]["content"][0]["text"] == "touched", r.text

    a, b = "res://cache/a", "res://cache/b"
    assert (read(a), read(b)) == (f"{a}#1", f"{b}#1")
    assert (read(a), read(b)) == (f"{a}#1", f"{b}#1"), "both kept"
    touch(a)
    assert read(a) == f"{a}#2", "the updated resource is read again"
    assert read(b) == f"{b}#1", "the other stays cached"
    assert counts(cached).get(f"/public read {b}") == 1, counts(cached)


def test_tool_annotations_are_learned_once_for_every_core(cached, tmp_path: Path) -> None:
    # Two workers: the list goes through one; calls on fresh connections reach either. Each
    # core keeps its own answers, but what the list said of the tools holds on both, so the
    # backend sees at most one call per core.
    config = tmp_path / "mcplb-cores.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n'
        f'[[servers]]\nname = "pub"\npath = "/pub"\nbackends = ["{cached["backend"]}/public"]\n'
        "[servers.health]\nenabled = false\n"
        '[servers.cache]\ntools = ["lookup"]\ntool_ttl = "60s"\ntool_scope = "public"\n'
    )
    proxy = start_proxy_file(config)
    try:
        url = f"http://{proxy.addr}/pub"
        lst = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        assert httpx2.post(url, json=lst, headers=ACCEPT, timeout=10).status_code == 200
        before = counts(cached).get("/public call lookup", 0)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "lookup", "arguments": {"key": "cores"}}}
        for _ in range(8):
            # A new connection each time (no keep-alive): the kernel spreads them.
            r = httpx2.post(url, json=call, headers={**ACCEPT, "Connection": "close"}, timeout=10)
            assert message(r)["result"]["content"][0]["text"].startswith("cores#"), r.text
        assert counts(cached).get("/public call lookup", 0) - before <= 2, counts(cached)
    finally:
        proxy.stop()


def test_a_virtual_servers_member_answers_are_cached_apart(cached) -> None:
    via, direct = f"{cached['base']}/all", f"{cached['base']}/pub"

    def post(url: str, method: str, params: dict) -> dict:
        r = httpx2.post(url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params},
                        headers=ACCEPT, timeout=10)
        assert r.status_code == 200, r.text
        answer = message(r)
        assert answer["id"] == 7 and "result" in answer, (method, params, r.text)
        return answer["result"]

    def read(url: str, uri: str) -> str:
        return post(url, "resources/read", {"uri": uri})["contents"][0]["text"]

    a, b = "res://virtual/a", "res://virtual/b"
    assert read(via, a) == f"{a}#1"
    assert read(via, a) == f"{a}#1", "kept in the member group's cache"
    assert read(direct, a) == f"{a}#2", "the group's own clients do not share the virtual server's entries"
    assert read(via, b) == f"{b}#1"
    # The member's resources/updated, relayed by the virtual server, evicts only that URI.
    touched = post(via, "tools/call", {"name": "pub_touch", "arguments": {"uri": a}})
    assert touched["content"][0]["text"] == "touched", touched
    assert read(via, a) == f"{a}#3"
    assert read(via, b) == f"{b}#1"

    # A read-only tool the member group names, once its annotations are known.
    post(direct, "tools/list", {})
    before = counts(cached).get("/public call lookup", 0)
    first = post(via, "tools/call", {"name": "pub_lookup", "arguments": {"key": "v"}})
    again = post(via, "tools/call", {"name": "pub_lookup", "arguments": {"key": "v"}})
    assert first == again and first["content"][0]["text"].startswith("v#"), (first, again)
    assert counts(cached).get("/public call lookup", 0) - before == 1, counts(cached)


def filtered_lists(c: dict, name: str = "mcplb_cache_lists_filtered_total") -> float:
    stats = httpx2.get(f"{c['admin']}/metrics", timeout=10).text
    return next(float(line.split()[1]) for line in stats.splitlines() if line.startswith(name))


def settled_filtered_lists(c: dict, name: str = "mcplb_cache_lists_filtered_total") -> float:
    """The count once the worker has folded its statistics (once a second): read until it
    stays the same across two folds."""
    last = filtered_lists(c, name)
    for _ in range(20):
        time.sleep(1.1)
        now = filtered_lists(c, name)
        if now == last:
            return now
        last = now
    return last


async def test_a_policed_list_is_filtered_once_per_class(cached) -> None:
    url = f"{cached['base']}/ruled"
    before = settled_filtered_lists(cached)
    assert await tool_names(url, ALICE) == {"lookup", "scan"}
    assert await tool_names(url, CAROL) == {"lookup", "scan"}
    assert await tool_names(url, BOB) == {"lookup", "scan", "change", "touch"}
    assert counts(cached).get("/ruled tools/list") == 1, counts(cached)

    # A caller's list as it goes out, its id made 0.
    def raw(key: str, rid: int) -> bytes:
        req = {"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json, text/event-stream", "X-Api-Key": key}
        r = httpx2.post(url, json=req, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert message(r)["id"] == rid, r.text
        return r.content.replace(f'"id":{rid}'.encode(), b'"id":0')

    # The first list came filtered from the backend's answer; from the cache, each class's
    # list is filtered once (one worker), however many requests the class makes.
    assert settled_filtered_lists(cached) - before == 2
    for key in (ALICE, CAROL, BOB, CAROL):
        await tool_names(url, key)
    assert counts(cached).get("/ruled tools/list") == 1, counts(cached)
    assert settled_filtered_lists(cached) - before == 2
    # On the wire (no protocol version header: another key, one more backend list): alice
    # and carol get the same bytes but for their ids, bob other bytes.
    assert raw(ALICE, 11) == raw(CAROL, 12)
    assert raw(BOB, 13) != raw(ALICE, 14)
    assert counts(cached).get("/ruled tools/list") == 2, counts(cached)
    assert settled_filtered_lists(cached) - before == 4

    # The backend says its tools changed: one new list, filtered again once per class.
    async with client(url, BOB) as c:
        assert text(await c.call_tool("change", {})) == "changed"
    assert await tool_names(url, CAROL) == {"lookup", "scan"}
    assert await tool_names(url, ALICE) == {"lookup", "scan"}
    assert await tool_names(url, BOB) == {"lookup", "scan", "change", "touch"}
    assert counts(cached).get("/ruled tools/list") == 3, counts(cached)
    assert settled_filtered_lists(cached) - before == 6


async def test_without_a_cache_a_policed_list_is_filtered_once_per_class_and_list(cached) -> None:
    # Every list goes to the backend; an answer with the same bytes as the class's last one
    # (but for its id) is not filtered again on the core, one with other bytes is.
    url = f"{cached['base']}/ruled-nc"
    name = "mcplb_lists_filtered_total"
    before = settled_filtered_lists(cached, name)
    for key in (ALICE, CAROL, BOB, ALICE, CAROL, BOB):
        want = {"lookup", "scan"} if key != BOB else {"lookup", "scan", "change", "touch"}
        assert await tool_names(url, key) == want
    assert counts(cached).get("/ruled-nc tools/list") == 6, counts(cached)
    assert settled_filtered_lists(cached, name) - before == 2
    # The backend's list changes (its bytes): each class's next list is filtered again, once.
    async with client(url, BOB) as c:
        assert text(await c.call_tool("change", {})) == "changed"
    for key in (CAROL, ALICE, BOB, BOB):
        await tool_names(url, key)
    assert settled_filtered_lists(cached, name) - before == 4
