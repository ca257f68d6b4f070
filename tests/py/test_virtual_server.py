"""A virtual server over real members, driven by the official Python SDK client, in session
(`legacy`) and stateless (`2026-07-28`) modes: an MCPServer from the Python SDK (`py`, both
eras), server-everything over Streamable HTTP (`ev`) and a stdio server (`sh`), both of the
2025 era alone (a 2026-07-28 client reaches them through the era bridge), and a server of the
2026-07-28 era alone (`mo`, modern_server.py). Lists merged with prefixes, filters and
renames; calls routed to the right member; progress streamed; a member's sampling and
elicitation requests answered by the client (as `input_required` in 2026-07-28 mode); one
member killed mid-session and brought back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_types import CreateMessageRequestParams, CreateMessageResult, TextContent

from conftest import REPO, SERVER_SCRIPT, _stop, free_port, start_proxy_file, text_of, wait_port

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 30.0
MODES = ["legacy", "2026-07-28"]
HERE = Path(__file__).resolve().parent
MODERN_SCRIPT = HERE / "modern_server.py"
EVERYTHING_JS = REPO / "tests" / "ts" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


class Member:
    """A member server process on a fixed port (so it can be killed and started again)."""

    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.port, self.log, self.env = argv, port, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, **(self.env or {})},
            )
        wait_port(self.port, 30)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture(scope="module")
def virtual(tmp_path_factory: pytest.TempPathFactory):
    """mcplb with a virtual server at /mcp over the four members; yields (url, py member, ev member)."""
    if not EVERYTHING_JS.exists():
        pytest.skip("tests/ts/node_modules is not installed (npm ci in tests/ts)")
    work = tmp_path_factory.mktemp("virtual")
    py_port, ev_port, mo_port = free_port(), free_port(), free_port()
    py = Member([sys.executable, str(SERVER_SCRIPT), "--port", str(py_port), "--name", "py-v"], py_port, work / "py.log")
    ev = Member(["node", str(EVERYTHING_JS), "streamableHttp"], ev_port, work / "ev.log", {"PORT": str(ev_port)})
    mo = Member([sys.executable, str(MODERN_SCRIPT), "--port", str(mo_port), "--name", "mo-v"], mo_port, work / "mo.log")
    py.start()
    ev.start()
    mo.start()
    stdio = [sys.executable, str(HERE / "stdio_server.py")]
    config = work / "virtual.toml"
    config.write_text(
        f"""
[proxy]
listen = "127.0.0.1:0"
workers = 2

[[servers]]
name = "py"
path = "/py"
backends = ["http://127.0.0.1:{py_port}/mcp"]
[servers.health]
interval = "300ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 1

[[servers]]
name = "every"
path = "/every"
backends = ["http://127.0.0.1:{ev_port}/mcp"]

[[servers]]
name = "local"
path = "/local"
backends = [{{ command = {stdio!r} }}]

[[servers]]
name = "modern"
path = "/modern"
backends = ["http://127.0.0.1:{mo_port}/mcp"]
[servers.health]
method = "server/discover"

[[servers]]
name = "work"
path = "/mcp"
prefix_mode = "always"
members = [
  {{ server = "py" }},
  {{ server = "every", prefix = "ev", tools = ["echo", "get-sum", "trigger-*"] }},
  {{ server = "local", prefix = "sh", deny_tools = ["crash", "garbage", "flood"], rename = {{ echo = "say" }} }},
  {{ server = "modern", prefix = "mo", tools = ["add", "whoami", "slow_progress"] }},
]
""".replace("'", '"')
    )
    proxy = start_proxy_file(config)
    yield f"http://{proxy.addr}/mcp", py, ev
    proxy.stop()
    py.stop()
    ev.stop()
    mo.stop()


async def names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


@pytest.mark.parametrize("mode", MODES)
async def test_lists_are_merged_and_calls_routed(virtual, mode: str) -> None:
    # In 2026-07-28 mode (stateless, no initialize) server-everything and the stdio server,
    # which speak the handshake era only, are reached through the era bridge's sessions.
    url = virtual[0]
    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT) as client:
        shown = await names(client)
        assert {"py_add", "py_whoami", "py_slow_progress"} <= shown, shown
        assert not any(n.startswith("sh_") and n.endswith(("crash", "garbage", "flood")) for n in shown), shown
        assert {"ev_echo", "ev_get-sum", "sh_say", "sh_pid"} <= shown, shown
        assert "sh_echo" not in shown and "ev_get-env" not in shown, shown
        assert text_of(await client.call_tool("py_add", {"a": 2, "b": 3})) == "5"
        assert text_of(await client.call_tool("py_whoami", {})) == "py-v"
        assert text_of(await client.call_tool("sh_say", {"text": "hi"})) == "hi"
        assert text_of(await client.call_tool("ev_echo", {"message": "x"})) == "Echo: x"
        assert text_of(await client.call_tool("ev_get-sum", {"a": 20, "b": 22})) == "The sum of 20 and 22 is 42."
        if mode == "legacy":
            assert client.server_info is not None and client.server_info.name == "work"
        else:
            assert client.protocol_version == "2026-07-28"


async def test_unknown_and_filtered_tools_get_the_spec_error(virtual) -> None:
    url = virtual[0]
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        for tool in ("py_nope", "sh_crash", "ev_get-env", "nothing"):
            with pytest.raises(Exception, match=f"Unknown tool: {tool}"):
                await client.call_tool(tool, {})


async def test_resources_and_prompts_of_members(virtual) -> None:
    url = virtual[0]
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert "info://name" in uris, uris
        read = await client.read_resource("info://name")
        assert read.contents[0].text == "py-v"
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert "py_greet" in prompts, prompts
        got = await client.get_prompt("py_greet", {"who": "tester"})
        assert "Hello tester, this is py-v." in got.messages[0].content.text


PROGRESS = {
    # member: (tool, arguments, what its answer says, the progress values it sends)
    "py": ("py_slow_progress", {"steps": 3, "delay": 0.5}, "done", [1, 2, 3]),
    "ev": ("ev_trigger-long-running-operation", {"duration": 1.5, "steps": 3}, "Long running operation completed", [1, 2, 3]),
    "sh": ("sh_progress", {"delay": 0.6}, "done", [1, 2]),
    "mo": ("mo_slow_progress", {"steps": 3, "delay": 0.5}, "done", [1, 2, 3]),
}


@pytest.mark.parametrize("member", list(PROGRESS))
@pytest.mark.parametrize("mode", MODES)
async def test_progress_streams_through(virtual, mode: str, member: str) -> None:
    url = virtual[0]
    tool, args, says, values = PROGRESS[member]
    seen: list[tuple[float, float]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), value))

    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT) as client:
        result = await client.call_tool(tool, args, progress_callback=on_progress)
    assert says in text_of(result)
    assert [v for _, v in seen] == values, seen
    # Streamed as they happened, not delivered together at the end.
    assert seen[-1][0] - seen[0][0] > 0.4, seen


@pytest.mark.parametrize("mode", MODES)
async def test_a_member_of_the_2026_era_alone(virtual, mode: str) -> None:
    # modern_server.py refuses initialize: for a 2025-era client's session mcplb asks its
    # server/discover instead and makes each request a 2026-07-28 one; a 2026-07-28 client's
    # requests go to it as they are.
    url = virtual[0]
    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT) as client:
        shown = await names(client)
        assert {"mo_add", "mo_whoami", "mo_slow_progress"} <= shown, shown
        assert "mo_calls" not in shown, shown
        assert text_of(await client.call_tool("mo_add", {"a": 20, "b": 22})) == "42"
        assert text_of(await client.call_tool("mo_whoami", {})) == "mo-v"
        # The others go on beside it.
        assert text_of(await client.call_tool("ev_echo", {"message": "y"})) == "Echo: y"


@pytest.mark.parametrize("mode", MODES)
async def test_a_members_sampling_request_is_answered_by_the_client(virtual, mode: str) -> None:
    # 2026-07-28: the stdio member's sampling/createMessage reaches the client as an
    # `input_required` result (mcplb's sealed requestState); its retry's answer goes back to
    # the waiting call in the era bridge's session.
    url = virtual[0]
    asked: list[str] = []

    async def sampling(context, params: CreateMessageRequestParams) -> CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="42"), model="test")

    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT, sampling_callback=sampling) as client:
        result = await client.call_tool("sh_sample", {"text": "what is six times seven?"})
    assert asked == ["what is six times seven?"]
    assert '"text": "42"' in text_of(result) or '"text":"42"' in text_of(result), text_of(result)


@pytest.mark.parametrize("mode", MODES)
async def test_a_members_elicitation_is_answered_by_the_client(virtual, mode: str) -> None:
    # server-everything lists trigger-elicitation-request to a client that declares elicitation
    # (its session, or in 2026-07-28 mode the bridge's session for what `_meta` declares).
    from mcp_types import ElicitResult

    url = virtual[0]
    asked: list[str] = []

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True, "integer": 7})

    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT, elicitation_callback=on_elicit) as client:
        assert "ev_trigger-elicitation-request" in await names(client)
        result = await client.call_tool("ev_trigger-elicitation-request", {})
        assert asked == ["Please provide inputs for the following fields:"]
        assert "Ada Lovelace" in text_of(result), text_of(result)
        assert text_of(await client.call_tool("ev_get-sum", {"a": 1, "b": 1})) == "The sum of 1 and 1 is 2."


KILLED = {
    # which member: (a tool of its, the call and its answer, a tool of two others)
    "py": ("py_whoami", ("py_whoami", {}, "py-v"), ("sh_say", "ev_echo")),
    "ev": ("ev_echo", ("ev_echo", {"message": "after"}, "Echo: after"), ("py_whoami", "sh_say")),
}


async def until_shown(client: Client, tool: str, shown: bool, within: float) -> set[str]:
    """Lists tools until `tool` is (or, with `shown` false, is not) among them: the last list."""
    deadline = time.monotonic() + within
    while (tool in (listed := await names(client))) != shown:
        assert time.monotonic() < deadline, f"{tool} {'did not come back' if shown else 'stayed'}"
        await anyio.sleep(0.25)
    return listed


@pytest.mark.parametrize("which", list(KILLED))
@pytest.mark.parametrize("mode", MODES)
async def test_a_killed_member_is_left_out_and_comes_back(virtual, mode: str, which: str) -> None:
    # `ev` under a 2026-07-28 client: reached through the era bridge's session, which the
    # restarted process does not know (mcplb opens a new one and sends the request again).
    url, py, ev = virtual
    member = {"py": py, "ev": ev}[which]
    tool, (call, args, answer), others = KILLED[which]
    async with Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT) as client:
        assert tool in await names(client)
        member.stop()
        # Fail-open: left out of the lists once found down (at once, or by its health
        # check), while the others go on in the same session.
        shown = await until_shown(client, tool, False, 10)
        assert set(others) <= shown, shown
        assert text_of(await client.call_tool("sh_say", {"text": "still here"})) == "still here"
        member.start()
        # Back once its health check passes, in the same client session (a new member
        # session is opened for it behind the scenes).
        await until_shown(client, tool, True, 30)
        # Connections pooled to the old process age out first (a call written to one may have
        # run: never sent twice).
        await anyio.sleep(0.6)
        assert text_of(await client.call_tool(call, args)) == answer


async def test_a_cancellation_reaches_the_member_running_the_call(virtual) -> None:
    url = virtual[0]
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        before = json.loads(text_of(await client.call_tool("sh_cancelled_ids", {})))
        # The client gives up after 0.5 s and sends notifications/cancelled for the call.
        with pytest.raises(Exception):
            await client.call_tool("sh_slow", {"seconds": 8, "text": "late"}, read_timeout_seconds=0.5)
        deadline = time.monotonic() + 5
        while len(json.loads(text_of(await client.call_tool("sh_cancelled_ids", {})))) == len(before):
            assert time.monotonic() < deadline, "the stdio member never saw the cancellation"
            await anyio.sleep(0.1)


async def test_a_members_list_changed_reaches_the_client_once(virtual) -> None:
    url = virtual[0]
    seen: list[str] = []

    async def on_message(message) -> None:
        seen.append(repr(message))

    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT, message_handler=on_message) as client:
        await names(client)
        assert text_of(await client.call_tool("sh_list_changed", {})) == "changed"
        await anyio.sleep(0.3)
    changed = [m for m in seen if "list_changed" in m or "ToolListChanged" in m]
    assert len(changed) == 1, seen
