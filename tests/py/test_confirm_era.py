"""Human approval (`effect = "confirm"`) where the client's session is not a backend's: mcplb's
own session for a 2025-era client of a 2026-07-28-only server (`modern_server.py`, through the
era bridge), and a 2025-era server that issues no session (`mcp_server.py --stateless`); and a
2026-07-28 server's own `input_required` rounds after mcplb's approval (`introduce`, which asks
for a name and roots, then samples), for a 2025-era client and a 2026-07-28 client.

The official Python SDK client answers mcplb's question through its elicitation callback; each
server's `calls` tool lists what it ran, so a declined call is seen never to reach it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Backend, _stop, audit_lines, free_port, start_proxy_file, wait_port
from mcp import Client
from mcp_types import CreateMessageResult, ElicitResult, ListRootsResult, Root, TextContent

pytestmark = pytest.mark.anyio

MODERN_SERVER = Path(__file__).resolve().parent / "modern_server.py"
CONFIRM_TIMEOUT = 3
READ_TIMEOUT = 30.0


def text(result) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.fixture(scope="module")
def confirm_era(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("confirm-era")
    port = free_port()
    log = open(d / "modern.log", "ab")
    modern = subprocess.Popen(
        [sys.executable, str(MODERN_SERVER), "--port", str(port), "--name", "modern"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    log.close()
    stateless = Backend("confirm-stateless", d, ("--stateless",))
    stateless.start()
    audit = d / "audit.log"
    try:
        wait_port(port, timeout=30)
        config = d / "mcplb.toml"
        config.write_text(
            '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n'
            f'[audit]\nlog = "{audit}"\n'
            '[[servers]]\nname = "modern"\npath = "/modern"\n'
            f'backends = ["http://127.0.0.1:{port}/mcp"]\nera = "2026"\nconfirm_timeout = "{CONFIRM_TIMEOUT}s"\n'
            '[servers.health]\nmethod = "server/discover"\n'
            '[[servers]]\nname = "stateless"\npath = "/stateless"\n'
            f'backends = ["{stateless.url}"]\nconfirm_timeout = "{CONFIRM_TIMEOUT}s"\n'
            # A virtual server over the 2026-07-28 server (the member's own names).
            '[[servers]]\nname = "vmodern"\npath = "/vmodern"\nprefix_mode = "never"\n'
            f'confirm_timeout = "{CONFIRM_TIMEOUT}s"\nmembers = [{{ server = "modern" }}]\n'
            '[[policies]]\neffect = "allow"\ntools = ["*"]\n'
            '[[policies]]\neffect = "confirm"\ntools = ["add", "introduce"]\n'
        )
        proxy = start_proxy_file(config)
        base = proxy.url.rsplit("/", 1)[0]
        yield {"modern": base + "/modern", "stateless": base + "/stateless", "vmodern": base + "/vmodern",
               "audit": audit}
        proxy.stop()
    finally:
        _stop(modern)
        stateless.stop()


class User:
    """An SDK client's callbacks: approves or declines mcplb's question, answers the server's own
    (a name, roots, a sampled line)."""

    def __init__(self, approve: bool = True) -> None:
        self.approve = approve
        self.asked: list[str] = []

    async def elicit(self, context, params) -> ElicitResult:
        if params.message.startswith("Allow the tool"):
            self.asked.append(params.message)
            if self.approve:
                return ElicitResult(action="accept", content={"approve": True})
            return ElicitResult(action="decline")
        self.asked.append(f"server:{params.message}")
        return ElicitResult(action="accept", content={"name": "Ada"})

    async def roots(self, context) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri="file:///work/ada", name="ada")])

    async def sample(self, context, params) -> CreateMessageResult:
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="roses"), model="m")

    def client(self, url: str, mode: str) -> Client:
        return Client(url, mode=mode, read_timeout_seconds=READ_TIMEOUT, elicitation_callback=self.elicit,
                      list_roots_callback=self.roots, sampling_callback=self.sample)


async def ran(url: str) -> list[str]:
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        return [t for t in text(await client.call_tool("calls", {})).split(",") if t]


async def test_mcplbs_own_session_for_a_2026_server_asks(confirm_era) -> None:
    url = confirm_era["modern"]
    user = User()
    before = await ran(url)
    async with user.client(url, "legacy") as client:
        assert text(await client.call_tool("whoami", {})) == "modern"
        assert user.asked == []
        assert text(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert len(user.asked) == 1 and "`add`" in user.asked[0] and "policies[1]" in user.asked[0], user.asked
        user.approve = False
        declined = await client.call_tool("add", {"a": 1, "b": 1})
        assert declined.is_error and "declined" in text(declined), declined
    assert (await ran(url))[len(before):] == ["whoami", "add"], "only the approved call ran"
    # A client that declared no elicitation: denied, told why.
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        with pytest.raises(Exception) as denied:
            await client.call_tool("add", {"a": 1, "b": 1})
        assert "approval" in str(denied.value), denied.value


async def test_a_2026_servers_own_input_rounds_follow_the_approval_for_a_2025_client(confirm_era) -> None:
    user = User()
    async with user.client(confirm_era["modern"], "legacy") as client:
        result = await client.call_tool("introduce", {})
        assert text(result) == "Ada|file:///work/ada|roses", result
    assert len(user.asked) == 2 and "`introduce`" in user.asked[0], user.asked
    assert user.asked[1] == "server:Who is calling?", user.asked

    def decisions(lines: list[dict]) -> list[tuple[str, str]]:
        return sorted((line["decision"], line["name"]) for line in lines if line.get("server") == "modern"
                      and line.get("name") in ("add", "introduce"))

    want = [("confirm_unavailable", "add"), ("confirmed", "add"), ("confirmed", "introduce"), ("declined", "add")]
    lines = audit_lines(confirm_era["audit"], lambda lines: decisions(lines) == want)
    assert decisions(lines) == want, lines


async def test_a_server_without_sessions_gets_its_clients_asked(confirm_era) -> None:
    import httpx

    url = confirm_era["stateless"]
    user = User()
    before = await ran(url)
    async with user.client(url, "legacy") as client:
        assert text(await client.call_tool("whoami", {})) == "confirm-stateless"
        assert text(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert len(user.asked) == 1 and "`add`" in user.asked[0], user.asked
        user.approve = False
        declined = await client.call_tool("add", {"a": 1, "b": 1})
        assert declined.is_error and "declined" in text(declined), declined
    assert (await ran(url))[len(before):] == ["whoami", "add"], "only the approved call ran"

    # On the wire: the server issues no session; mcplb gives a client that declared
    # elicitation an id of its own (and one that did not, none), and its DELETE ends nothing.
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

    def init(caps: dict) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": caps,
                           "clientInfo": {"name": "raw", "version": "1"}}}
        return httpx.post(url, json=body, headers=headers, timeout=READ_TIMEOUT)

    assert "mcp-session-id" not in init({}).headers
    sid = init({"elicitation": {}}).headers["mcp-session-id"]
    assert httpx.delete(url, headers={**headers, "mcp-session-id": sid}, timeout=10).status_code == 200

    # Without elicitation declared: denied, told why.
    async with Client(url, mode="legacy", read_timeout_seconds=READ_TIMEOUT) as client:
        with pytest.raises(Exception) as denied:
            await client.call_tool("add", {"a": 1, "b": 1})
        assert "approval" in str(denied.value), denied.value

    def decisions(lines: list[dict]) -> list[str]:
        return sorted(line["decision"] for line in lines if line.get("server") == "stateless"
                      and line.get("name") == "add")

    want = ["confirm_unavailable", "confirmed", "declined"]
    lines = audit_lines(confirm_era["audit"], lambda lines: decisions(lines) == want)
    assert decisions(lines) == want, lines


async def test_a_2026_servers_own_input_rounds_follow_the_approval_for_a_2026_client(confirm_era) -> None:
    url = confirm_era["modern"]
    user = User()
    async with user.client(url, "2026-07-28") as client:
        result = await client.call_tool("introduce", {})
        assert text(result) == "Ada|file:///work/ada|roses", result
    # mcplb asked once; the server's own rounds (its name question, roots, sampling) followed
    # without a second approval.
    assert len(user.asked) == 2 and "`introduce`" in user.asked[0], user.asked
    assert user.asked[1] == "server:Who is calling?", user.asked

    # On the wire: the server's round comes back with its requestState wrapped in mcplb's
    # approval; a state whose server part was changed is no approval (asked again).
    import httpx

    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "introduce"}
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}, "roots": {}, "sampling": {}}}

    def call(rid: int, **extra) -> dict:
        body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                "params": {"name": "introduce", "arguments": {}, "_meta": meta, **extra}}
        r = httpx.post(url, json=body, headers=headers, timeout=READ_TIMEOUT)
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
            return json.loads(data[-1])
        return r.json()

    first = call(1)["result"]
    (key, _), = first["inputRequests"].items()
    yes = {key: {"action": "accept", "content": {"approve": True}}}
    second = call(2, requestState=first["requestState"], inputResponses=yes)["result"]
    assert second["resultType"] == "input_required", second
    sealed, _, backend_state = second["requestState"].partition(".")
    assert sealed and backend_state, second
    assert all(k != key for k in second["inputRequests"]), "the server's own questions"
    forged = call(3, requestState=f"{sealed}.x{backend_state}", inputResponses={})["result"]
    assert forged["resultType"] == "input_required" and "mcplb" in json.dumps(forged["inputRequests"]), forged


async def test_a_virtual_servers_2026_member_asks_for_input_after_the_approval(confirm_era) -> None:
    user = User()
    async with user.client(confirm_era["vmodern"], "2026-07-28") as client:
        result = await client.call_tool("introduce", {})
        assert text(result) == "Ada|file:///work/ada|roses", result
    assert len(user.asked) == 2 and "`introduce`" in user.asked[0], user.asked
    assert user.asked[1] == "server:Who is calling?", user.asked
