"""Answers mcplb makes before it has read the request reach async HTTP clients.

An async client (httpx's, and the SDK's httpx2) writes the whole request body before it reads
the answer. When mcplb refuses a request on its head (413 for a declared body over
`max_body_bytes`, 431 for a huge head, 401 for a bad key) it must not close the socket with
the body unread: the kernel would reset the connection and the client would see "connection
reset" instead of the answer. mcplb closes lingering (shuts its write side, reads and drops
the rest of the body, then closes). Each answer is checked on a fresh connection and on a
kept-alive one after a successful request, over http and https, with both clients.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import AsyncIterator

import httpx
import httpx2
import pytest
from conftest import Backend, make_pki, start_proxy_file

pytestmark = pytest.mark.anyio

KEY = "py-edge-key"
MAX_BODY = 64 * 1024
# Over max_body_bytes, and far over what loopback socket buffers hold unread.
BIG = 4 * 1024 * 1024
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
CLIENTS = {"httpx": httpx.AsyncClient, "httpx2": httpx2.AsyncClient}


def rpc(id_: int, method: str, pad: int = 0) -> bytes:
    params = {"protocolVersion": "2025-06-18", "capabilities": {},
              "clientInfo": {"name": "edge", "version": "0"}}
    if pad:
        params["pad"] = "x" * pad
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode()


@pytest.fixture(scope="module")
def edge(backends: list[Backend], tmp_path_factory: pytest.TempPathFactory):
    """mcplb over http and over https in front of py-a/py-b: `/mcp` open, `/keyed` behind an
    API key, `/limited` over a global rate limit that is already spent."""
    d = tmp_path_factory.mktemp("edge")
    ca, cert, key = make_pki(d)
    urls = ", ".join(f'"{b.url}"' for b in backends)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    groups = (
        f'[[servers]]\nname = "open"\npath = "/mcp"\nbackends = [{urls}]\n'
        f'[[servers]]\nname = "keyed"\npath = "/keyed"\nbackends = [{urls}]\n'
        f'[servers.auth]\napi_keys = ["sha256:{digest}"]\n'
        f'[[servers]]\nname = "limited"\npath = "/limited"\nbackends = [{urls}]\n'
        '[[limits]]\nserver = "limited"\nkey = "global"\nrate = 0.001\nburst = 1\n'
    )
    proxy_head = f'[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\nmax_body_bytes = {MAX_BODY}\n'
    plain = d / "mcplb-edge.toml"
    plain.write_text(proxy_head + groups)
    tls = d / "mcplb-edge-tls.toml"
    tls.write_text(proxy_head + f'[proxy.tls]\ncert = "{cert}"\nkey = "{key}"\n' + groups)
    proxies = [start_proxy_file(plain), start_proxy_file(tls)]
    bases = {
        "http": f"http://{proxies[0].addr}",
        "https": f"https://localhost:{proxies[1].addr.rsplit(':', 1)[1]}",
    }
    # Spend the rate limit's one token (a thousand seconds to the next).
    for base in bases.values():
        verify = ssl.create_default_context(cafile=str(ca)) if base.startswith("https") else True
        with httpx.Client(timeout=30, verify=verify) as c:
            c.post(f"{base}/limited", content=rpc(0, "initialize"), headers=HEADERS)
    yield bases, ca
    for p in proxies:
        p.stop()


@pytest.fixture(params=[(c, s) for c in CLIENTS for s in ("http", "https")], ids=lambda p: f"{p[0]}-{p[1]}")
def client(request, edge):
    """A factory of async clients of one kind for one scheme, and that scheme's base URL."""
    kind, scheme = request.param
    bases, ca = edge
    verify = ssl.create_default_context(cafile=str(ca)) if scheme == "https" else True

    def make():
        return CLIENTS[kind](timeout=30, verify=verify)

    return make, bases[scheme]


def local_addr(r) -> object:
    """The client side of the connection a response came on."""
    return r.extensions["network_stream"].get_extra_info("client_addr")


def assert_jsonrpc_error(r, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == -32600
    assert body["error"]["message"] == message
    assert r.headers.get("connection", "").lower() == "close"


async def refused_fresh_and_kept_alive(client, path: str, status: int, message: str,
                                       body: bytes, headers: dict[str, str] | None = None,
                                       warm: tuple[str, dict[str, str]] = ("/mcp", {})) -> None:
    """`body` to `path` is answered `status` on a fresh connection, and on one that has just
    carried a successful request (`warm`: its path and headers); the client goes on after."""
    make, base = client
    h = {**HEADERS, **(headers or {})}
    async with make() as c:
        r = await c.post(f"{base}{path}", content=body, headers=h)
        assert_jsonrpc_error(r, status, message)
    async with make() as c:
        ok = await c.post(f"{base}{warm[0]}", content=rpc(1, "initialize"), headers={**HEADERS, **warm[1]})
        assert ok.status_code == 200, ok.text
        async with c.stream("POST", f"{base}{path}", content=body, headers=h) as r:
            # Read while the connection is open (it closes after the answer).
            assert local_addr(r) == local_addr(ok), "the refused request did not reuse the connection"
            await r.aread()
        assert_jsonrpc_error(r, status, message)
        # The client opens a new connection and goes on.
        again = await c.post(f"{base}{warm[0]}", content=rpc(3, "initialize"), headers={**HEADERS, **warm[1]})
        assert again.status_code == 200, again.text


async def test_413_body_over_max_body_bytes(client) -> None:
    await refused_fresh_and_kept_alive(client, "/mcp", 413, "request body too large", rpc(2, "tools/list", BIG))


async def test_413_chunked_body_over_max_body_bytes(client) -> None:
    """A chunked body is refused once its decoded bytes pass the cap, with more still coming."""
    make, base = client

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"pad": "'
        for _ in range(BIG // 65536):
            yield b"x" * 65536
        yield b'"}}'

    async with make() as c:
        r = await c.post(f"{base}/mcp", content=chunks(), headers=HEADERS)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == "request body too large"


async def test_431_huge_head_with_a_body(client) -> None:
    await refused_fresh_and_kept_alive(client, "/mcp", 431, "request head too large",
                                       rpc(2, "tools/list", BIG), {"x-pad": "p" * 40000})


async def test_401_bad_key_with_a_large_body(client) -> None:
    await refused_fresh_and_kept_alive(client, "/keyed", 401, "invalid API key",
                                       rpc(2, "tools/list", BIG), {"authorization": "Bearer wrong"},
                                       warm=("/keyed", {"x-api-key": KEY}))


async def test_429_rate_limited_with_a_large_body(client) -> None:
    """Over the rate limit, a large body (under the cap: read, then refused) still gets its 429,
    and the connection stays open."""
    make, base = client
    body = rpc(2, "initialize", MAX_BODY - 1024)
    async with make() as c:
        r = await c.post(f"{base}/limited", content=body, headers=HEADERS)
        assert r.status_code == 429, r.text
        assert r.json()["id"] == 2
        ok = await c.post(f"{base}/mcp", content=rpc(1, "initialize"), headers=HEADERS)
        assert ok.status_code == 200, ok.text
        r = await c.post(f"{base}/limited", content=body, headers=HEADERS)
        assert r.status_code == 429, r.text
        assert local_addr(r) == local_addr(ok)
