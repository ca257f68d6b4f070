"""Per-tool policy and the audit trail with the official MCP Python SDK client through mcplb.

Two named API-key identities see different tool lists; the bot is denied a call, answered like
an unknown tool with the request's id, and the backend never runs it (its `calls` tool lists
what it ran); the audit log has the line with the rule that denied it. A JWT scope rule lets one token's caller use a tool another cannot even see. The
admin port's `/policy` explains a decision. A reload that changes the policy applies to an
open session at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx2
import jwt
import pytest
from conftest import Backend, audit_lines, ed25519_jwks, free_port, start_proxy_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

pytestmark = pytest.mark.anyio

ALICE, BOT = "alice-key", "bot-key"
ISSUER = "https://auth.policy.example"
ACCEPT = {"Accept": "application/json, text/event-stream"}
CONFIRM_TIMEOUT = 3


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config_text(port: int, admin: int, backend: str, jwks: Path, audit: Path, bot_may_add: bool = True) -> str:
    bot_tools = '["add", "calls"]' if bot_may_add else '["calls"]'
    return (
        f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 2\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[audit]\nlog = "{audit}"\narguments = "hash"\n'
        f'[[servers]]\nname = "keys"\npath = "/mcp"\nbackends = ["{backend}"]\n'
        f'[servers.auth]\napi_keys = [{{ sha256 = "{digest(ALICE)}", identity = "alice" }},'
        f' {{ sha256 = "{digest(BOT)}", identity = "bot-ci" }}]\n'
        f'[[servers]]\nname = "tokens"\npath = "/jwt"\nbackends = ["{backend}"]\n'
        f'[servers.auth.jwt]\nissuer = "{ISSUER}"\naudience = "mcplb"\njwks_file = "{jwks}"\n'
        # policies[0]: alice may use every tool, prompt and resource.
        '[[policies]]\nserver = "keys"\neffect = "allow"\nidentities = ["alice"]\n'
        'tools = ["*"]\nprompts = ["*"]\nresources = ["info://"]\n'
        # policies[1]: bots may use a few tools.
        f'[[policies]]\nserver = "keys"\neffect = "allow"\nidentities = ["bot-*"]\ntools = {bot_tools}\n'
        # policies[2]: and never whoami, whatever else allows it.
        '[[policies]]\nserver = "keys"\neffect = "deny"\nidentities = ["bot-*"]\ntools = ["whoami"]\n'
        # policies[3], [4]: with JWTs, add for everyone, whoami with a scope.
        '[[policies]]\nserver = "tokens"\neffect = "allow"\ntools = ["add"]\n'
        '[[policies]]\nserver = "tokens"\neffect = "allow"\nscopes = ["tools:whoami"]\ntools = ["whoami"]\n'
        # Human approval: a group without authentication; policies[5] allows every tool,
        # policies[6] asks before `add` runs.
        f'[[servers]]\nname = "asks"\npath = "/ask"\nbackends = ["{backend}"]\nconfirm_timeout = "{CONFIRM_TIMEOUT}s"\n'
        '[[policies]]\nserver = "asks"\neffect = "allow"\ntools = ["*"]\n'
        '[[policies]]\nserver = "asks"\neffect = "confirm"\ntools = ["add"]\n'
        # No rules, but the tools annotated destructive (and those not listed yet) are asked about.
        f'[[servers]]\nname = "careful"\npath = "/careful"\nbackends = ["{backend}"]\nconfirm_destructive = true\n'
        # A virtual server over a plain group of the same backend; policies[7] allows every
        # tool, policies[8] asks before `add` runs (the member's own name: no prefixes).
        f'[[servers]]\nname = "plain"\npath = "/plain"\nbackends = ["{backend}"]\n'
        f'[[servers]]\nname = "vask"\npath = "/vask"\nprefix_mode = "never"\nconfirm_timeout = "{CONFIRM_TIMEOUT}s"\n'
        'members = [{ server = "plain" }]\n'
        '[[policies]]\nserver = "vask"\neffect = "allow"\ntools = ["*"]\n'
        '[[policies]]\nserver = "vask"\neffect = "confirm"\ntools = ["add"]\n'
    )


@pytest.fixture(scope="module")
def policy_proxy(e2e_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """mcplb with policies in front of its own backend (whose `calls` only these tests move)."""
    d = tmp_path_factory.mktemp("policy")
    backend = Backend("policy", d)
    backend.start()
    jwks = d / "jwks.json"
    key = ed25519_jwks(jwks, "p-1")
    port, admin = free_port(), free_port()
    config = d / "mcplb-policy.toml"
    audit = d / "audit.log"
    config.write_text(config_text(port, admin, backend.url, jwks, audit))
    proxy = start_proxy_file(config)
    yield {"url": proxy.url, "base": f"http://{proxy.addr}", "admin": f"http://127.0.0.1:{admin}",
           "key": key, "config": config, "audit": audit, "args": (port, admin, backend.url, jwks, audit)}
    proxy.stop()
    backend.stop()


def text(result) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def token(key: Ed25519PrivateKey, sub: str, scope: str = "") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "mcplb", "sub": sub, "iat": now, "exp": now + 300, "scope": scope}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "p-1"})


async def tool_names(url: str, headers: dict[str, str]) -> set[str]:
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            return {t.name for t in (await client.list_tools()).tools}


async def test_two_identities_see_different_tools_and_the_bot_is_denied(policy_proxy) -> None:
    url = policy_proxy["url"]
    alice = {"Authorization": f"Bearer {ALICE}"}
    bot = {"X-Api-Key": BOT}
    assert {"add", "whoami", "calls", "slow_progress"} <= await tool_names(url, alice)
    assert await tool_names(url, bot) == {"add", "calls"}

    async with httpx2.AsyncClient(headers=bot, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            assert text(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
            before = text(await client.call_tool("calls", {})).split(",")
            with pytest.raises(Exception) as denied:
                await client.call_tool("whoami", {})
            assert "Unknown tool" in str(denied.value), denied.value
            after = text(await client.call_tool("calls", {})).split(",")
    assert after == before, "the denied call reached the backend"
    assert before[-1] == "add"

    # On the wire: a JSON-RPC error with the request's id, as for an unknown tool.
    call = {"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    r = httpx2.post(url, json=call, headers={**bot, **ACCEPT, "MCP-Protocol-Version": "2025-06-18"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == 77 and r.json()["error"]["code"] == -32602, r.text

    # The audit trail has the denied call, with the rule that denied it, and the bot's add
    # with its arguments' hash; never a key.
    def bot_whoami(lines: list[dict]) -> list[dict]:
        return [line for line in lines if line.get("name") == "whoami" and line["identity"] == "bot-ci"]

    def bot_adds(lines: list[dict]) -> list[dict]:
        return [line for line in lines if line.get("name") == "add" and line["identity"] == "bot-ci"]

    # Two workers hand their lines over apart: the add's may come after the denials'.
    lines = audit_lines(policy_proxy["audit"], lambda lines: len(bot_whoami(lines)) >= 2 and bot_adds(lines))
    denied_lines = bot_whoami(lines)
    assert len(denied_lines) == 2, lines
    for line in denied_lines:
        assert line["decision"] == "denied" and line["rule"] == "policies[2]", line
        assert line["method"] == "tools/call" and line["server"] == "keys" and line["code"] == -32602, line
        # Absent keys are left out: no backend was reached, nothing came back from one.
        assert "backend" not in line and "upstream_error" not in line, line
    adds = bot_adds(lines)
    assert adds and adds[0]["decision"] == "allowed" and adds[0]["rule"] == "policies[1]", adds
    assert len(adds[0]["arguments_sha256"]) == 64 and adds[0]["backend"], adds
    assert "code" not in adds[0] and len(adds[0]["session"]) == 16, adds
    assert any(line["method"] == "initialize" for line in lines), lines
    raw = policy_proxy["audit"].read_text()
    assert ALICE not in raw and BOT not in raw

    # Alice may, and the backend runs it.
    async with httpx2.AsyncClient(headers=alice, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            assert text(await client.call_tool("whoami", {})) == "policy"
            assert text(await client.call_tool("calls", {})).split(",")[-1] == "whoami"


async def test_a_jwt_scope_rule(policy_proxy) -> None:
    url = policy_proxy["base"] + "/jwt"
    key = policy_proxy["key"]
    scoped = {"Authorization": f"Bearer {token(key, 'carol', 'openid tools:whoami')}"}
    plain = {"Authorization": f"Bearer {token(key, 'dave', 'openid')}"}
    assert await tool_names(url, scoped) == {"add", "whoami"}
    assert await tool_names(url, plain) == {"add"}
    async with httpx2.AsyncClient(headers=plain, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            assert text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
            with pytest.raises(Exception, match="Unknown tool"):
                await client.call_tool("whoami", {})
    async with httpx2.AsyncClient(headers=scoped, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            assert text(await client.call_tool("whoami", {})) == "policy"


def test_admin_explains_a_decision(policy_proxy) -> None:
    admin = policy_proxy["admin"]
    r = httpx2.get(f"{admin}/policy", params={"identity": "bot-ci", "server": "keys", "tool": "whoami"})
    assert r.status_code == 200, r.text
    group = r.json()["servers"][0]
    assert group["decision"]["effect"] == "deny" and group["decision"]["rule"] == "policies[2]", group
    assert [line.split(":")[0] for line in group["rules"]] == ["policies[1]", "policies[2]"], group
    r = httpx2.get(f"{admin}/policy", params={"identity": "bot-ci", "server": "keys", "tool": "fs_write"})
    assert r.json()["servers"][0]["decision"]["explained"] == "deny by policy_default"
    assert httpx2.get(f"{admin}/policy").status_code == 400


async def test_a_reload_changes_the_policy_of_an_open_session(policy_proxy) -> None:
    url, admin, config = policy_proxy["url"], policy_proxy["admin"], policy_proxy["config"]
    original = config.read_text()
    bot = {"X-Api-Key": BOT}
    try:
        async with httpx2.AsyncClient(headers=bot, timeout=30) as http:
            async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                assert text(await client.call_tool("add", {"a": 1, "b": 2})) == "3"
                # logrotate moves the audit log away; the reload opens it again.
                audit = policy_proxy["audit"]
                audit.rename(audit.with_name("audit.log.1"))
                config.write_text(config_text(*policy_proxy["args"], bot_may_add=False))
                r = httpx2.post(f"{admin}/reload")
                assert r.status_code == 200 and "servers.keys.policies changed" in r.json()["changes"], r.text
                assert {t.name for t in (await client.list_tools()).tools} == {"calls"}
                with pytest.raises(Exception, match="Unknown tool"):
                    await client.call_tool("add", {"a": 1, "b": 2})
        lines = audit_lines(audit, lambda lines: any(line.get("name") == "add" for line in lines))
        assert [(line["decision"], line["rule"]) for line in lines if line.get("name") == "add"] == [
            ("denied", "policy_default")
        ], lines
    finally:
        config.write_text(original)
        httpx2.post(f"{admin}/reload")


# --- human approval (`effect = "confirm"`) ----------------------------------------------------

MODERN = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
}


def modern_call(rid: int, name: str, arguments: dict, caps: dict | None, **extra) -> dict:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": caps or {},
    }
    params = {"name": name, "arguments": arguments, "_meta": meta, **extra}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def post_modern(url: str, body: dict) -> dict:
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": body["params"]["name"]}
    r = httpx2.post(url, json=body, headers=headers, timeout=30)
    assert r.status_code in (200, 400), r.text
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return r.json()


def backend_calls(url: str) -> list[str]:
    """What the backend ran, through the keys group (alice may call `calls`)."""
    body = modern_call(1, "calls", {}, None)
    r = httpx2.post(url, json=body, headers={**MODERN, "mcp-method": "tools/call", "mcp-name": "calls",
                                              "Authorization": f"Bearer {ALICE}"}, timeout=30)
    data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")] or [r.text]
    text = json.loads(data[-1])["result"]["content"][0]["text"]
    return text.split(",") if text else []


async def test_a_confirm_rule_asks_the_user_through_elicitation(policy_proxy) -> None:
    from mcp_types import ElicitResult

    url, ask = policy_proxy["url"], policy_proxy["base"] + "/ask"
    asked: list[str] = []
    answer = {"action": "accept", "content": {"approve": True}}

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(**answer)

    async with Client(ask, mode="legacy", elicitation_callback=on_elicit) as client:
        # No approval for a tool no confirm rule names.
        assert text(await client.call_tool("whoami", {})) == "policy"
        assert asked == []
        before = backend_calls(url)
        assert text(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert len(asked) == 1 and "`add`" in asked[0] and '"a":20' in asked[0], asked
        assert "policies[6]" in asked[0], asked
        assert backend_calls(url)[len(before):] == ["add"], "the approved call ran once"

        answer.update(action="decline", content=None)
        before = backend_calls(url)
        declined = await client.call_tool("add", {"a": 1, "b": 1})
        assert declined.is_error and "declined" in text(declined), declined
        assert len(asked) == 2
        assert backend_calls(url)[len(before):] == [], "the declined call reached the backend"

        # Accepted without approving is a decline too.
        answer.update(action="accept", content={"approve": False})
        assert (await client.call_tool("add", {"a": 1, "b": 2})).is_error
        assert backend_calls(url)[len(before):] == []

    def decisions(lines: list[dict]) -> list[tuple[str, str]]:
        return [(line["decision"], line["rule"]) for line in lines if line.get("server") == "asks"
                and line.get("name") == "add"]

    lines = audit_lines(policy_proxy["audit"], lambda lines: len(decisions(lines)) >= 3)
    # Lines from two workers reach the file in batches, not in the order of the calls.
    assert sorted(decisions(lines)) == [("confirmed", "policies[6]"), ("declined", "policies[6]"),
                                        ("declined", "policies[6]")], lines


async def test_an_unanswered_question_times_out_and_denies(policy_proxy) -> None:
    import anyio
    from mcp_types import ElicitResult

    url, ask = policy_proxy["url"], policy_proxy["base"] + "/ask"

    async def slow(context, params) -> ElicitResult:
        await anyio.sleep(CONFIRM_TIMEOUT + 2)
        return ElicitResult(action="accept", content={"approve": True})

    before = backend_calls(url)
    async with Client(ask, mode="legacy", elicitation_callback=slow) as client:
        late = await client.call_tool("add", {"a": 5, "b": 5})
        assert late.is_error and "in time" in text(late), late
        await anyio.sleep(2.5)  # the late answer arrives and finds no call waiting
    assert backend_calls(url)[len(before):] == [], "a timed-out call reached the backend"
    lines = audit_lines(policy_proxy["audit"], lambda lines: any(line["decision"] == "timed_out" for line in lines))
    assert [line["rule"] for line in lines if line["decision"] == "timed_out"] == ["policies[6]"], lines


async def test_a_client_without_elicitation_is_denied_and_told_why(policy_proxy) -> None:
    url, ask = policy_proxy["url"], policy_proxy["base"] + "/ask"
    before = backend_calls(url)
    async with Client(ask, mode="legacy") as client:
        with pytest.raises(Exception) as denied:
            await client.call_tool("add", {"a": 1, "b": 1})
        assert "approval" in str(denied.value), denied.value
        assert text(await client.call_tool("whoami", {})) == "policy"
    # On the wire: the rule and the reason.
    body = modern_call(9, "add", {"a": 1, "b": 1}, None)
    out = post_modern(ask, body)
    assert out["id"] == 9 and out["error"]["data"]["rule"] == "policies[6]", out
    assert "elicitation" in out["error"]["data"]["reason"], out
    assert backend_calls(url)[len(before):] == ["whoami"], "only the call no rule asks about ran"
    lines = audit_lines(policy_proxy["audit"],
                        lambda lines: sum(line["decision"] == "confirm_unavailable" for line in lines) >= 2)
    assert {line["rule"] for line in lines if line["decision"] == "confirm_unavailable"} == {"policies[6]"}


async def test_2026_clients_approve_through_input_required(policy_proxy) -> None:
    from mcp_types import ElicitResult

    url, ask = policy_proxy["url"], policy_proxy["base"] + "/ask"
    asked: list[str] = []

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    before = backend_calls(url)
    async with Client(ask, mode="2026-07-28", elicitation_callback=on_elicit) as client:
        assert text(await client.call_tool("add", {"a": 3, "b": 4})) == "7"
    assert len(asked) == 1 and "`add`" in asked[0], asked
    assert backend_calls(url)[len(before):] == ["add"]

    # The wire: input_required with a sealed state; tampered, rebound or declined: never run.
    caps = {"elicitation": {}}
    first = post_modern(ask, modern_call(21, "add", {"a": 1, "b": 2}, caps))
    assert first["id"] == 21 and first["result"]["resultType"] == "input_required", first
    state = first["result"]["requestState"]
    (key, question), = first["result"]["inputRequests"].items()
    assert question["method"] == "elicitation/create", question
    yes = {key: {"action": "accept", "content": {"approve": True}}}
    tampered = state[:-2] + ("AA" if state[-2:] != "AA" else "BB")
    again = post_modern(ask, modern_call(22, "add", {"a": 1, "b": 2}, caps, requestState=tampered, inputResponses=yes))
    assert again["result"]["resultType"] == "input_required", "a state that does not open is no approval"
    other = post_modern(ask, modern_call(23, "add", {"a": 100, "b": 2}, caps, requestState=state, inputResponses=yes))
    assert "another call" in other["error"]["message"], other
    no = {key: {"action": "decline"}}
    second = post_modern(ask, modern_call(24, "add", {"a": 1, "b": 2}, caps))["result"]["requestState"]
    declined = post_modern(ask, modern_call(24, "add", {"a": 1, "b": 2}, caps, requestState=second, inputResponses=no))
    assert declined["result"]["isError"] is True and declined["result"]["resultType"] == "complete", declined
    assert backend_calls(url)[len(before) + 1:] == [], "an unapproved call reached the backend"
    # The approved retry, with the arguments in another order, reaches the backend once.
    ok = post_modern(ask, modern_call(25, "add", {"b": 2, "a": 1}, caps, requestState=state, inputResponses=yes))
    assert ok["id"] == 25 and ok["result"]["content"][0]["text"] == "3", ok
    assert backend_calls(url)[len(before) + 1:] == ["add"]
    # A state is answered once: replayed, it is refused and nothing runs again.
    replay = post_modern(ask, modern_call(26, "add", {"a": 1, "b": 2}, caps, requestState=state, inputResponses=yes))
    assert "answered already" in replay["error"]["message"], replay
    assert backend_calls(url)[len(before) + 1:] == ["add"]

    def modern(lines: list[dict]) -> set[str]:
        return {line["decision"] for line in lines if line.get("server") == "asks"}

    # Each core hands its lines to the writer in batches: wait for all three decisions.
    want = {"confirm_asked", "confirmed", "declined"}
    lines = audit_lines(policy_proxy["audit"], lambda lines: want <= modern(lines))
    assert want <= modern(lines), lines


async def test_confirm_destructive_asks_before_tools_annotated_destructive(policy_proxy) -> None:
    import anyio
    from mcp_types import ElicitResult, ToolListChangedNotification

    url, careful = policy_proxy["url"], policy_proxy["base"] + "/careful"
    asked: list[str] = []
    changed = anyio.Event()

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message.split("`")[1])
        return ElicitResult(action="accept", content={"approve": True})

    async def on_message(message) -> None:
        if isinstance(message, ToolListChangedNotification):
            changed.set()

    async with Client(careful, mode="legacy", elicitation_callback=on_elicit, message_handler=on_message) as client:
        # Before any list: nothing is known, so even a read-only tool is asked about.
        assert text(await client.call_tool("whoami", {})) == "policy"
        assert asked == ["whoami"]
        await client.list_tools()
        assert text(await client.call_tool("whoami", {})) == "policy"
        assert text(await client.call_tool("add", {"a": 2, "b": 2})) == "4"
        assert asked == ["whoami", "add"], "only the destructive tool is asked about once listed"
        # A log line on the call's stream that only quotes the method changes nothing.
        assert text(await client.call_tool("mention_change", {})) == "mentioned"
        await client.call_tool("whoami", {})
        assert asked == ["whoami", "add"], asked
        # The backend says its tools changed: what was harmless is asked about until relisted.
        assert text(await client.call_tool("change_tools", {})) == "changed"
        with anyio.fail_after(10):
            await changed.wait()
        await client.call_tool("whoami", {})
        assert asked[2:] == ["whoami"], asked
        await client.list_tools()
        await client.call_tool("whoami", {})
        assert asked[3:] == [], asked

    lines = audit_lines(policy_proxy["audit"], lambda lines: sum(
        line.get("server") == "careful" and line["decision"] == "confirmed" for line in lines) >= 3)
    rules = {line["rule"] for line in lines if line.get("server") == "careful" and line["decision"] == "confirmed"}
    assert rules == {"confirm_destructive"}, lines


async def test_approval_over_one_http2_connection(policy_proxy) -> None:
    # h2c with prior knowledge: the call's stream carries the question while the answer goes
    # up another stream of the same connection.
    import httpx

    ask = policy_proxy["base"] + "/ask"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {"elicitation": {}},
                       "clientInfo": {"name": "h2", "version": "1"}}}
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as c:
        r = await c.post(ask, json=init, headers=ACCEPT)
        assert r.http_version == "HTTP/2" and r.status_code == 200, r.text
        headers = {**ACCEPT, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 6, "b": 7}}}
        events: list[dict] = []
        async with c.stream("POST", ask, json=call, headers=headers) as s:
            assert s.http_version == "HTTP/2" and s.headers["content-type"].startswith("text/event-stream")
            async for line in s.aiter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                events.append(msg)
                if msg.get("method") == "elicitation/create":
                    reply = {"jsonrpc": "2.0", "id": msg["id"], "result": {"action": "accept", "content": {"approve": True}}}
                    assert (await c.post(ask, json=reply, headers=headers)).status_code == 202
        assert events[0]["method"] == "elicitation/create", events
        assert events[-1]["id"] == 2 and events[-1]["result"]["content"][0]["text"] == "13", events


async def test_a_virtual_server_asks_and_routes_the_approved_call_to_its_member(policy_proxy) -> None:
    import anyio
    from mcp_types import ElicitResult

    url, vask = policy_proxy["url"], policy_proxy["base"] + "/vask"
    asked: list[str] = []
    answer = {"action": "accept", "content": {"approve": True}}

    async def on_elicit(context, params) -> ElicitResult:
        asked.append(params.message)
        if answer.get("late"):
            await anyio.sleep(CONFIRM_TIMEOUT + 2)
            return ElicitResult(action="accept", content={"approve": True})
        return ElicitResult(**answer)

    # A 2025-era session whose client declared elicitation: asked on the call's SSE answer,
    # the approved call answered by the member in the same stream.
    before = backend_calls(url)
    async with Client(vask, mode="legacy", elicitation_callback=on_elicit) as client:
        assert text(await client.call_tool("whoami", {})) == "policy"
        assert asked == []
        assert text(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert len(asked) == 1 and "`add`" in asked[0] and "policies[8]" in asked[0], asked
        assert backend_calls(url)[len(before):] == ["whoami", "add"], "the approved call ran once"

        answer.update(action="decline", content=None)
        mark = backend_calls(url)
        declined = await client.call_tool("add", {"a": 1, "b": 1})
        assert declined.is_error and "declined" in text(declined), declined
        answer.update(late=True)
        late = await client.call_tool("add", {"a": 2, "b": 2})
        assert late.is_error and "in time" in text(late), late
        assert len(asked) == 3
        await anyio.sleep(2.5)  # the late answer arrives and finds no call waiting
        assert backend_calls(url)[len(mark):] == [], "an unapproved call reached the member"

    # A client that declared no elicitation: denied, told why.
    async with Client(vask, mode="legacy") as client:
        with pytest.raises(Exception) as denied:
            await client.call_tool("add", {"a": 1, "b": 1})
        assert "approval" in str(denied.value), denied.value

    # A 2026-07-28 client: the sealed input_required, and the approved retry reaches the member
    # (through the era bridge: the member's backend speaks the 2025 era).
    asked.clear()
    answer.clear()
    answer.update(action="accept", content={"approve": True})
    mark = backend_calls(url)
    async with Client(vask, mode="2026-07-28", elicitation_callback=on_elicit) as client:
        assert text(await client.call_tool("add", {"a": 3, "b": 4})) == "7"
    assert len(asked) == 1 and "`add`" in asked[0], asked
    assert backend_calls(url)[len(mark):] == ["add"]
    caps = {"elicitation": {}}
    first = post_modern(vask, modern_call(31, "add", {"a": 1, "b": 2}, caps))
    assert first["id"] == 31 and first["result"]["resultType"] == "input_required", first
    (key, _), = first["result"]["inputRequests"].items()
    no = {key: {"action": "decline"}}
    declined = post_modern(vask, modern_call(32, "add", {"a": 1, "b": 2}, caps,
                                             requestState=first["result"]["requestState"], inputResponses=no))
    assert declined["result"]["isError"] is True, declined
    assert backend_calls(url)[len(mark) + 1:] == [], "a declined call reached the member"

    def decisions(lines: list[dict]) -> list[tuple[str, str]]:
        return [(line["decision"], line["rule"]) for line in lines if line.get("server") == "vask"
                and line.get("name") == "add"]

    want = [("confirm_asked", "policies[8]"), ("confirm_asked", "policies[8]"),
            ("confirm_unavailable", "policies[8]"), ("confirmed", "policies[8]"),
            ("confirmed", "policies[8]"), ("declined", "policies[8]"), ("declined", "policies[8]"),
            ("timed_out", "policies[8]")]
    lines = audit_lines(policy_proxy["audit"], lambda lines: len(decisions(lines)) >= len(want))
    assert sorted(decisions(lines)) == want, decisions(lines)
