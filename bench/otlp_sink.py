"""A minimal OTLP/HTTP traces sink for benchmarks: answers every POST 200 with an empty
ExportTraceServiceResponse and counts requests and bytes (printed at SIGTERM). It does not
decode the protobuf (tests/py/test_traces.py does): it only keeps the exporter's path real.

    python3 bench/otlp_sink.py PORT
"""

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        seen["requests"] += 1
        seen["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_):
        print(f"otlp sink: {seen['requests']} export requests, {seen['bytes']} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
