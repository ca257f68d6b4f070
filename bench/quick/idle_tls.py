"""RSS cost of idle client connections, plain or TLS: N connections each send one request, read
its answer, then stay open. usage: idle_tls.py PID PORT N [tls]   (prints KiB before/after)."""
import socket, ssl, sys, time, os

pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
use_tls = len(sys.argv) > 4 and sys.argv[4] == "tls"
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
REQ = (b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n"
       b"mcp-protocol-version: 2026-07-28\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


def rss(p):
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])


ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])


def connect():
    s = socket.create_connection(("127.0.0.1", port))
    if use_tls:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    return s


def one(s):
    s.sendall(REQ)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    cl = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest) < cl:
        rest += s.recv(65536)


warm = connect()
one(warm)
time.sleep(0.5)
before = rss(pid)
socks = []
for i in range(n):
    s = connect()
    one(s)
    socks.append(s)
time.sleep(float(os.environ.get("WAIT", "2")))
after = rss(pid)
print(f"{'tls' if use_tls else 'plain'} conns={n} rss_before={before}KiB rss_after={after}KiB "
      f"per_conn={(after - before) * 1024 / n:.0f} B")
