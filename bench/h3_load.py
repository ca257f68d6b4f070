#!/usr/bin/env python3
"""HTTP/3 load for bench/h3_side_by_side.py: aioquic's QUIC and HTTP/3 client (no C load
generator here speaks HTTP/3: Debian's h2load is built without it). CONNECTIONS connections,
each sending one POST at a time, paced at RPS requests per second per connection (as h2load's
--rps), until REQUESTS answers came; prints a JSON line {ok, failed, secs} and writes each
request's time in µs to --log (one per line).

    h3_load.py --host 127.0.0.1 --port P --connections 16 --rps 50 --requests 20000 \
        --body body.json --log lat.txt
"""

import argparse
import asyncio
import json
import ssl
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.http = H3Connection(self._quic)
        self.waiting = {}

    def quic_event_received(self, event):
        for ev in self.http.handle_event(event):
            w = self.waiting.get(getattr(ev, "stream_id", None))
            if w is None:
                continue
            if isinstance(ev, HeadersReceived):
                for k, v in ev.headers:
                    if k == b":status":
                        w["status"] = int(v)
            if getattr(ev, "stream_ended", False) and isinstance(ev, (HeadersReceived, DataReceived)):
                self.waiting.pop(ev.stream_id)
                w["done"].set_result(w.get("status", 0))

    async def post(self, authority, body):
        sid = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.waiting[sid] = {"done": fut}
        self.http.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", authority),
                                     (b":path", b"/mcp"), (b"content-type", b"application/json"),
                                     (b"accept", b"application/json, text/event-stream"),
                                     (b"content-length", str(len(body)).encode())])
        self.http.send_data(sid, body, end_stream=True)
        self.transmit()
        return await fut


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rps", type=float, default=50.0)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--body", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    body = open(a.body, "rb").read()
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)
    authority = f"localhost:{a.port}".encode()
    lat = []
    failed = 0
    left = a.requests

    async def one(conn_no):
        nonlocal left, failed
        async with connect(a.host, a.port, configuration=cfg, create_protocol=Client) as c:
            period = 1.0 / a.rps
            # Spread the connections' first requests over one period.
            nxt = time.monotonic() + period * conn_no / a.connections
            while left > 0:
                left -= 1
                delay = nxt - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                nxt += period
                t0 = time.perf_counter_ns()
                status = await c.post(authority, body)
                dt = (time.perf_counter_ns() - t0) // 1000
                if status == 200:
                    lat.append(dt)
                else:
                    failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(a.connections)))
    secs = time.monotonic() - t0
    with open(a.log, "w") as f:
        f.write("\n".join(str(x) for x in lat))
    print(json.dumps({"ok": len(lat), "failed": failed, "secs": secs}))


if __name__ == "__main__":
    asyncio.run(main())
