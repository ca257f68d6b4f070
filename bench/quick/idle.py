import socket, sys, time, os
pid=int(sys.argv[1]); port=int(sys.argv[2]); n=int(sys.argv[3])
def rss(p):
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def total_rss(pids): return sum(rss(p) for p in pids)
pids=[pid]+[int(x) for x in sys.argv[4:]]
time.sleep(0.5)
before=total_rss(pids)
socks=[]
for i in range(n):
    s=socket.create_connection(("127.0.0.1",port))
    s.sendall(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nmcp-protocol-version: 2026-07-28\r\ncontent-length: 62\r\n\r\n"+b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}'[:62])
    socks.append(s)
time.sleep(float(os.environ.get("WAIT","1.5")))
after=total_rss(pids)
print(f"port={port} conns={n} rss_before={before}KiB rss_after={after}KiB per_conn={(after-before)*1024/n:.0f} B")
