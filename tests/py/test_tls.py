"""The official Python SDK client over https: mcplb terminates TLS (a test CA and leaf made here
with openssl) in front of the SDK servers py-a and py-b; the client verifies against that CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx2
import pytest
from conftest import Backend, Proxy, make_pki, start_proxy_file, text_of
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def tls_proxy(backends: list[Backend], tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_pki(d)
    urls = ", ".join(f'"{b.url}"' for b in backends)
    config = d / "mcplb-tls.toml"
    config.write_text(
        '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n\n'
        f'[proxy.tls]\ncert = "{cert}"\nkey = "{key}"\n\n'
        f'[[servers]]\nname = "pytls"\npath = "/mcp"\nbackends = [{urls}]\n'
    )
    proxy = start_proxy_file(config)
    yield proxy, ca
    proxy.stop()


async def test_sdk_client_over_https(tls_proxy: tuple[Proxy, Path]) -> None:
    proxy, ca = tls_proxy
    port = proxy.addr.rsplit(":", 1)[1]
    url = f"https://localhost:{port}/mcp"
    ctx = ssl.create_default_context(cafile=str(ca))
    async with httpx2.AsyncClient(verify=ctx, timeout=READ_TIMEOUT) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy",
                          read_timeout_seconds=READ_TIMEOUT) as client:
            assert client.server_info is not None
            me = client.server_info.name
            assert me in ("py-a", "py-b")
            assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
            # Sticky over TLS, and progress streamed through.
            assert text_of(await client.call_tool("whoami", {})) == me
            tools = await client.list_tools()
            assert "slow_progress" in {t.name for t in tools.tools}


async def test_https_refused_without_the_ca(tls_proxy: tuple[Proxy, Path]) -> None:
    proxy, _ = tls_proxy
    port = proxy.addr.rsplit(":", 1)[1]
    async with httpx2.AsyncClient(verify=ssl.create_default_context(), timeout=10) as http:
        with pytest.raises(Exception):
            await http.post(f"https://localhost:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
