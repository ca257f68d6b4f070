"""JWT bearer tokens with the official MCP Python SDK client through mcplb.

mcplb verifies an EdDSA token signed here (PyJWT and cryptography come with the `mcp`
package) against a JWKS file made here; the SDK client sends it in `Authorization` and works
as usual. Without a token the 401 carries the `resource_metadata` hint, which the SDK's own
helpers follow to the protected-resource metadata document, parsed with the SDK's model.
The SDK client's session is its own: another subject's token with its session id gets 404,
and the client refreshing its token (same subject) keeps the session.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import httpx2
import jwt
import pytest
from conftest import ed25519_jwks, free_port, start_proxy_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp import Client
from mcp.client.auth.utils import extract_resource_metadata_from_www_auth
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import ProtectedResourceMetadata
from mcp_types import TextContent

pytestmark = pytest.mark.anyio

ISSUER = "https://auth.py.example"


@pytest.fixture
def auth_proxy(tmp_path: Path, backends):
    """mcplb in front of py-a and py-b, requiring an EdDSA JWT; yields (url, signing key)."""
    jwks = tmp_path / "jwks.json"
    key = ed25519_jwks(jwks, "py-1")
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    urls = ", ".join(f'"{b.url}"' for b in backends)
    config = tmp_path / "mcplb-auth.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n'
        f'[[servers]]\nname = "py-auth"\npath = "/mcp"\nbackends = [{urls}]\n'
        f'[servers.auth.jwt]\nissuer = "{ISSUER}"\naudience = "{resource}"\njwks_file = "{jwks}"\n'
        f'[servers.auth.resource_metadata]\nresource = "{resource}"\n'
        f'authorization_servers = ["{ISSUER}"]\nscopes_supported = ["mcp:tools"]\n'
    )
    proxy = start_proxy_file(config)
    yield proxy.url, resource, key
    proxy.stop()


def token_for(key: Ed25519PrivateKey, audience: str, sub: str = "py-user", **extra) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": audience, "sub": sub, "iat": now, "exp": now + 300, **extra}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "py-1"})


async def test_sdk_client_with_bearer_token(auth_proxy) -> None:
    url, resource, key = auth_proxy
    headers = {"Authorization": f"Bearer {token_for(key, resource)}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            tools = await client.list_tools()
            assert "add" in {t.name for t in tools.tools}
            result = await client.call_tool("add", {"a": 2, "b": 3})
            assert "".join(c.text for c in result.content if isinstance(c, TextContent)) == "5"


async def test_sdk_client_refused_without_or_with_bad_token(auth_proxy) -> None:
    url, resource, key = auth_proxy
    for headers in ({}, {"Authorization": f"Bearer {token_for(key, 'https://other.example/mcp')}"}):
        statuses: list[int] = []

        async def seen(response: httpx2.Response) -> None:
            statuses.append(response.status_code)

        async with httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [seen]}) as http:
            with pytest.raises(Exception):
                async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                    await client.list_tools()
        assert statuses and set(statuses) == {401}, statuses


async def test_a_session_belongs_to_its_subject(auth_proxy) -> None:
    url, resource, key = auth_proxy
    session_ids: list[str] = []

    async def seen(response: httpx2.Response) -> None:
        if sid := response.headers.get("mcp-session-id"):
            session_ids.append(sid)

    headers = {"Authorization": f"Bearer {token_for(key, resource, sub='alice')}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [seen]}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            await client.list_tools()
            sid = session_ids[0]
            other = {"Authorization": f"Bearer {token_for(key, resource, sub='mallory')}",
                     "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18",
                     "Accept": "application/json, text/event-stream"}
            call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                    "params": {"name": "add", "arguments": {"a": 1, "b": 1}}}
            r = httpx2.post(url, json=call, headers=other)
            assert r.status_code == 404 and r.json()["id"] == 9, r.text
            assert httpx2.get(url, headers=other).status_code == 404
            assert httpx2.delete(url, headers=other).status_code == 404
            # The client refreshes its token (another token, the same subject): same session.
            refreshed = token_for(key, resource, sub="alice", jti="refreshed")
            assert refreshed not in headers["Authorization"]
            http.headers["Authorization"] = f"Bearer {refreshed}"
            result = await client.call_tool("add", {"a": 2, "b": 3})
            assert "".join(c.text for c in result.content if isinstance(c, TextContent)) == "5"
    assert set(session_ids) == {sid}


def test_401_hint_leads_to_metadata(auth_proxy) -> None:
    url, resource, _ = auth_proxy
    body = {"jsonrpc": "2.0", "id": 42, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}}
    r = httpx2.post(url, json=body, headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401
    assert r.json()["id"] == 42
    hint = extract_resource_metadata_from_www_auth(r)
    assert hint == resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    doc = httpx.get(hint)
    assert doc.status_code == 200
    meta = ProtectedResourceMetadata.model_validate(doc.json())
    assert str(meta.resource) == resource
    assert [str(a).rstrip("/") for a in meta.authorization_servers] == [ISSUER]
    assert meta.scopes_supported == ["mcp:tools"]
