"""SIGTERM to mcplb while an official Python SDK client (session mode) holds its GET stream and
runs a streaming tool call: the call completes, the client sees its GET stream end at once
(and tries to reconnect, as it would to another replica), and mcplb exits right after the call
instead of waiting `shutdown_timeout` (30 s) for the GET stream."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import anyio
import pytest
from conftest import Backend, _start_proxy
from mcp import Client
from mcp_types import TextContent

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 30.0


async def test_sigterm_ends_the_get_stream_and_exits_after_the_call(
    backends: list[Backend], e2e_dir: Path, needs_proxy: None, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _start_proxy(e2e_dir, "pyshutdown", backends[:1])
    assert proxy.proc is not None
    exited: dict[str, float] = {}

    def watch_exit() -> None:
        assert proxy.proc is not None
        proxy.proc.wait()
        exited["at"] = time.monotonic()

    threading.Thread(target=watch_exit, daemon=True).start()
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    caplog.set_level(logging.INFO, logger="mcp.client.streamable_http")
    async with Client(proxy.url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        await client.list_tools()
        # The SDK opens the session's GET stream once initialized; give it a moment.
        await anyio.sleep(0.5)

        async def sigterm() -> None:
            await anyio.sleep(0.7)
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sigterm)
            result = await client.call_tool("slow_progress", {"steps": 6, "delay": 0.5}, progress_callback=on_progress)
        call_end = time.monotonic()
        call_end_wall = time.time()
        assert not result.is_error and [c.text for c in result.content if isinstance(c, TextContent)] == ["done"]
        assert progress == [1, 2, 3, 4, 5, 6]
        for _ in range(100):
            if "at" in exited:
                break
            await anyio.sleep(0.05)
    assert "at" in exited, "mcplb did not exit"
    assert proxy.proc.returncode == 0
    after = exited["at"] - call_end
    assert after < 1.0, f"mcplb exited {after:.2f} s after the call ended"
    ended = [
        r.created for r in caplog.records if r.name == "mcp.client.streamable_http" and "GET stream disconnected" in r.getMessage()
    ]
    assert ended, "the client never saw its GET stream end"
    assert ended[0] < call_end_wall, "the GET stream ended only after the call"
