"""stdio backends end to end: the official MCP SDK client, through a real `mcplb`, to servers that
are commands speaking stdio (`mcp-server-time` from PyPI, and `stdio_server.py`).

The config form is `backends = [{ command = [...], mode = "per-session" | "shared" }]`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import HERE, Proxy, server_config, start_proxy_text, text_of
from mcp import Client

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 30.0
STDIO_SERVER = HERE / "stdio_server.py"


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _config(name: str, command: list[str], mode: str) -> str:
    return server_config(name, f'{{ command = {_toml_list(command)}, mode = "{mode}" }}')


def _children(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _start(tmp_path: Path, name: str, command: list[str], mode: str) -> Proxy:
    return start_proxy_text(tmp_path, name, _config(name, command, mode))


@pytest.fixture
def time_proxy(tmp_path: Path):
    proxy = _start(tmp_path, "time", [sys.executable, "-m", "mcp_server_time"], "per-session")
    yield proxy
    proxy.stop()


async def test_mcp_server_time_behind_mcplb(time_proxy: Proxy) -> None:
    async with Client(time_proxy.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        assert client.server_info is not None
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"get_current_time", "convert_time"} <= tools, tools
        answer = json.loads(text_of(await client.call_tool("get_current_time", {"timezone": "UTC"})))
        assert answer["timezone"] == "UTC"
        assert answer["datetime"][:4].isdigit(), answer
        converted = json.loads(
            text_of(
                await client.call_tool(
                    "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
                )
            )
        )
        assert converted["target"]["datetime"][11:16] == "21:00", converted


async def test_two_sessions_and_no_orphans_after_mcplb_stops(time_proxy: Proxy) -> None:
    async with Client(time_proxy.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as a:
        async with Client(time_proxy.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as b:
            for c in (a, b):
                assert json.loads(text_of(await c.call_tool("get_current_time", {"timezone": "UTC"})))["timezone"] == "UTC"
    assert time_proxy.proc is not None
    children = _children(time_proxy.proc.pid)
    assert children, "mcplb started no stdio child"
    time_proxy.stop()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in children if Path(f"/proc/{p}").exists()]
    assert not left, f"stdio children outlived mcplb: {left}"


async def test_progress_from_a_shared_stdio_server_streams_live(tmp_path: Path) -> None:
    proxy = _start(tmp_path, "shared", [sys.executable, "-u", str(STDIO_SERVER)], "shared")
    try:
        progress: list[tuple[float, float]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((time.monotonic(), value))

        async with Client(proxy.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
            result = await client.call_tool("progress", {"delay": 1.0}, progress_callback=on_progress)
            returned_at = time.monotonic()
            assert text_of(result) == "done"
            pid = text_of(await client.call_tool("pid", {}))
        async with Client(proxy.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as other:
            assert text_of(await other.call_tool("pid", {})) == pid  # one shared process
        assert [p[1] for p in progress] == [1, 2], progress
        assert returned_at - progress[0][0] >= 1.5, "progress was buffered until the result"
    finally:
        proxy.stop()
