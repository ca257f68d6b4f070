"""The 2024-11-05 HTTP+SSE transport through mcplb, both directions, with the official Python SDK.

- An SSE-only SDK server (`legacy_server.py`, `MCPServer.run("sse")`) as a backend,
  configured as `backends = [{ sse = "http://127.0.0.1:PORT/sse" }]`, reached by the SDK's
  Streamable HTTP client (`mcp.Client`).
- The SDK's legacy SSE client (`mcp.client.sse.sse_client`) through a group with
  `legacy_sse = true`, which exposes `{path}/sse` and `{path}/messages`, in front of a
  Streamable HTTP SDK server (`mcp_server.py`), and in front of the SSE-only server (old
  client to old server, both bridges in a row).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client

from conftest import _BACKENDS, Backend, Proxy, server_config, start_proxy_text, text_of

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
LEGACY_SCRIPT = HERE / "legacy_server.py"
READ_TIMEOUT = 30.0


class LegacyBackendProcess(Backend):
    """One `legacy_server.py` subprocess (SSE-only SDK server)."""

    script = LEGACY_SCRIPT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse"


def _config(name: str, backends: str, legacy_sse: bool) -> str:
    return server_config(name, backends, "legacy_sse = true\n" if legacy_sse else "")


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("legacy")


@pytest.fixture(scope="module")
def sse_server(legacy_dir: Path):
    """An SSE-only SDK server, "py-old"."""
    b = LegacyBackendProcess("py-old", legacy_dir)
    _BACKENDS.append(b)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def streamable_server(legacy_dir: Path):
    """A Streamable HTTP SDK server, "py-new"."""
    b = Backend("py-new", legacy_dir)
    _BACKENDS.append(b)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def proxy_to_sse_server(sse_server: LegacyBackendProcess, legacy_dir: Path):
    """mcplb with the SSE-only server as its backend."""
    proxy = start_proxy_text(legacy_dir, "to-old", _config("to-old", f'{{ sse = "{sse_server.url}" }}', False))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def legacy_front_proxy(streamable_server: Backend, legacy_dir: Path):
    """mcplb exposing /mcp/sse for old clients, in front of a Streamable HTTP server."""
    proxy = start_proxy_text(legacy_dir, "front", _config("front", f'"{streamable_server.url}"', True))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def old_to_old_proxy(sse_server: LegacyBackendProcess, legacy_dir: Path):
    """mcplb with both bridges: old clients at /mcp/sse, the SSE-only server behind."""
    proxy = start_proxy_text(
        legacy_dir,
        "old-to-old",
        _config("old-to-old", f'{{ sse = "{sse_server.url}" }}', True),
    )
    yield proxy
    proxy.stop()


# --- new clients, old server ------------------------------------------------------------------


async def _new_client_round_trip(url: str, expect_name: str) -> None:
    """The SDK's Streamable HTTP client against an SSE-only server (through a bridge)."""
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        assert client.server_info is not None
        assert client.server_info.name == expect_name
        tools = await client.list_tools()
        assert {"add", "whoami", "slow_progress", "log_then"} <= {t.name for t in tools.tools}
        assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
        assert text_of(await client.call_tool("log_then", {"text": "hi"})) == "hi"
        read = await client.read_resource("info://name")
        assert read.contents[0].text == expect_name
        prompt = await client.get_prompt("greet", {"who": "tester"})
        assert f"Hello tester, this is {expect_name}." in prompt.messages[0].content.text
        progress: list[float] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        result = await client.call_tool("slow_progress", {"steps": 3, "delay": 0.1}, progress_callback=on_progress)
        assert text_of(result) == "done"
        assert progress == [1, 2, 3], progress


async def test_streamable_client_to_sse_only_server(proxy_to_sse_server: Proxy) -> None:
    await _new_client_round_trip(proxy_to_sse_server.url, "py-old")


async def test_progress_from_sse_only_server_arrives_before_the_result(proxy_to_sse_server: Proxy) -> None:
    seen: list[tuple[float, float]] = []
    done_at: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), progress))

    async with Client(proxy_to_sse_server.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        result = await client.call_tool(
            "slow_progress", {"steps": 3, "delay": 0.3}, progress_callback=on_progress
        )
        done_at.append(time.monotonic())
    assert text_of(result) == "done"
    assert [p for _, p in seen] == [1, 2, 3], seen
    # Streamed as they happened, not buffered until the end.
    assert seen[0][0] < done_at[0] - 0.4, (seen, done_at)


async def test_two_sessions_to_sse_only_server(proxy_to_sse_server: Proxy) -> None:
    async with Client(proxy_to_sse_server.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as a:
        async with Client(proxy_to_sse_server.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as b:
            assert text_of(await a.call_tool("log_then", {"text": "from a"})) == "from a"
            assert text_of(await b.call_tool("log_then", {"text": "from b"})) == "from b"
            assert text_of(await a.call_tool("add", {"a": 1, "b": 1})) == "2"


async def test_a_2026_client_through_the_era_bridge_to_an_sse_only_server(proxy_to_sse_server: Proxy) -> None:
    # The 2024-11-05 server, bridged to Streamable HTTP, is a 2025-era backend: a 2026-07-28
    # client (no initialize, no session) reaches it through the era bridge, progress included.
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(proxy_to_sse_server.url, mode="2026-07-28", read_timeout_seconds=READ_TIMEOUT) as client:
        assert {"add", "slow_progress"} <= {t.name for t in (await client.list_tools()).tools}
        assert text_of(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        result = await client.call_tool("slow_progress", {"steps": 3, "delay": 0.1}, progress_callback=on_progress)
        assert text_of(result) == "done"
        assert progress == [1, 2, 3], progress


# --- old clients, new server ------------------------------------------------------------------


async def _old_client_round_trip(sse_url: str, expect_name: str) -> None:
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with sse_client(sse_url, timeout=10, sse_read_timeout=READ_TIMEOUT) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=READ_TIMEOUT) as session:
            init = await session.initialize()
            assert init.server_info.name == expect_name
            tools = await session.list_tools()
            assert {"add", "whoami", "slow_progress"} <= {t.name for t in tools.tools}
            assert text_of(await session.call_tool("add", {"a": 20, "b": 22})) == "42"
            assert text_of(await session.call_tool("whoami", {})) == expect_name
            result = await session.call_tool(
                "slow_progress", {"steps": 3, "delay": 0.1}, progress_callback=on_progress
            )
            assert text_of(result) == "done"
            assert progress == [1, 2, 3], progress
            await session.send_ping()


def main() -> None:
    """For the Rust tests of the bridges alone (no mcplb wiring):
    `python test_legacy_sse.py old-client SSE_URL NAME` or `... new-client MCP_URL NAME`."""
    import anyio

    mode, url, name = sys.argv[1:4]
    runner = _old_client_round_trip if mode == "old-client" else _new_client_round_trip
    anyio.run(runner, url, name)
    print("OK")


async def test_sse_client_through_mcplb(legacy_front_proxy: Proxy) -> None:
    await _old_client_round_trip(f"http://{legacy_front_proxy.addr}/mcp/sse", "py-new")


async def test_sse_client_to_sse_only_server_through_mcplb(old_to_old_proxy: Proxy) -> None:
    await _old_client_round_trip(f"http://{old_to_old_proxy.addr}/mcp/sse", "py-old")


if __name__ == "__main__":
    main()
