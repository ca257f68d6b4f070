"""End-to-end tests: the official MCP Python SDK client talks to SDK servers through mcplb."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import text_of
from mcp import Client

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 30.0


async def whoami(client: Client) -> str:
    return text_of(await client.call_tool("whoami", {}))


# --- handshake era (initialize + Mcp-Session-Id) -------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_initialize_list_call(proxy_url: str, mode: str) -> None:
    async with Client(proxy_url, mode=mode, read_timeout_seconds=READ_TIMEOUT) as client:
        if mode == "legacy":
            assert client.server_info is not None
            assert client.server_info.name in ("py-a", "py-b")
        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        assert {"add", "whoami", "slow_progress"} <= names, names
        assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"


async def test_resource_and_prompt(proxy_url: str) -> None:
    async with Client(proxy_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        me = await whoami(client)
        resources = await client.list_resources()
        assert "info://name" in {str(r.uri) for r in resources.resources}
        read = await client.read_resource("info://name")
        assert read.contents[0].text == me  # same backend as the tool call
        prompt = await client.get_prompt("greet", {"who": "tester"})
        assert f"Hello tester, this is {me}." in prompt.messages[0].content.text


async def test_session_is_sticky(proxy_url: str) -> None:
    async with Client(proxy_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        names = [await whoami(client) for _ in range(5)]
    assert len(set(names)) == 1, names
    assert names[0] in ("py-a", "py-b")


async def test_new_sessions_spread_over_backends(proxy_url: str, needs_proxy: None) -> None:
    seen = []
    for _ in range(6):
        async with Client(proxy_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
            seen.append(await whoami(client))
    assert set(seen) == {"py-a", "py-b"}, seen


async def test_progress_is_streamed_not_buffered(proxy_url: str) -> None:
    await _check_progress_streams(proxy_url, "legacy")


async def _check_progress_streams(url: str, mode: str) -> None:
    progress: list[tuple[float, float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((time.monotonic(), value, total))

    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT) as client:
        result = await client.call_tool("slow_progress", {"steps": 3, "delay": 1.0}, progress_callback=on_progress)
        returned_at = time.monotonic()
    assert text_of(result) == "done"
    assert [p[1] for p in progress] == [1, 2, 3], progress
    assert all(p[2] == 3 for p in progress), progress
    lead = returned_at - progress[0][0]
    assert lead >= 1.5, f"first progress arrived only {lead:.2f} s before the result: the stream was buffered"


# --- 2026-07-28 (stateless, no initialize) -------------------------------------------------


async def test_stateless_2026_07_28(stateless_proxy_url: str) -> None:
    # mcp 2.3.0 supports it: Client(mode="2026-07-28") adopts the version without a handshake
    # and sends each request as a self-contained POST; the server's session manager routes any
    # request whose MCP-Protocol-Version header is not a handshake-era version to its 2026 path.
    async with Client(stateless_proxy_url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
        assert client.protocol_version == "2026-07-28"
        tools = await client.list_tools()
        assert {"add", "whoami", "slow_progress"} <= {t.name for t in tools.tools}
        assert text_of(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert await whoami(client) == "py-stateless"


async def test_stateless_2026_07_28_progress(stateless_proxy_url: str) -> None:
    await _check_progress_streams(stateless_proxy_url, "2026-07-28")


async def test_legacy_client_on_stateless_backend(stateless_proxy_url: str) -> None:
    # Handshake-era client, server issues no Mcp-Session-Id.
    async with Client(stateless_proxy_url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        assert text_of(await client.call_tool("add", {"a": 1, "b": 1})) == "2"


# --- raw HTTP --------------------------------------------------------------------------------


def test_unknown_session_id_is_404(proxy_url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-06-18",
        "Mcp-Session-Id": "this-session-does-not-exist-0123456789",
    }
    r = httpx.post(proxy_url, json=body, headers=headers, timeout=10.0)
    assert r.status_code == 404, (r.status_code, r.headers, r.text)
