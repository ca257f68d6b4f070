#!/usr/bin/env python3
"""HTTP/2 beside HTTP/1.1 (issue 19): mcplb and Envoy (its `mcp` filter + router, codec AUTO:
HTTP/1.1 and h2c with prior knowledge on one listener) in front of the same mock backend, driven
by h2load (Debian nghttp2-client) in each protocol; CPU per request and p50/p99.

Started by bench/h2_side_by_side.sh. Python 3 standard library only; the process and machine
helpers are side_by_side.py's. Every process it starts is stopped by PID at exit.

Layout (2 cores): the proxy under test on core 0 (one worker), the stateless mock backend
(`mcplb-load mock --threads 1 --stateless`) and h2load (`-t 1`) on core 1. The backend side is
HTTP/1.1 for both proxies. Cells, each a closed loop of a fixed number of requests in flight:
- h1:   64 connections, HTTP/1.1, one request at a time on each;
- h2c:  64 connections, HTTP/2, one stream at a time on each (the protocol's own cost);
- h2c-mux: 4 connections, HTTP/2, 16 streams at a time on each (a browser's shape).
The latencies are h2load's per-request times (its --log-file) in a closed loop: they include
queueing at the fixed concurrency (no coordinated-omission correction); compare them between
systems of the same cell, not with the open-loop figures of the other benchmarks.

Settings (environment): REQUESTS per cell (default 60000), RUNS (3), CELLS ("h1 h2c h2c-mux"),
SYSTEMS ("mcplb envoy"), BIN (target/release), TOOLS (../bench-tools), BASE_PORT (27700), OUT,
RESULT_NAME (h2-side-by-side).
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

ROOT = sbs.ROOT
REQUESTS = int(os.environ.get("REQUESTS", 60000))
RUNS = int(os.environ.get("RUNS", 3))
CELLS = os.environ.get("CELLS", "h1 h2c h2c-mux").split()
SYSTEMS = os.environ.get("SYSTEMS", "mcplb envoy").split()
BIN = sbs.BIN = os.environ.get("BIN", sbs.BIN)
TOOLS = os.path.abspath(os.environ.get("TOOLS", os.path.join(ROOT, "..", "bench-tools")))
BASE = int(os.environ.get("BASE_PORT", 27700))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
RESULT_NAME = os.environ.get("RESULT_NAME", "h2-side-by-side")
ENVOY = os.path.join(TOOLS, "venv", "bin", "envoy")

# (h2load protocol flags, connections, streams per connection)
CELL_ARGS = {
    "h1": (["--h1"], 64, 1),
    "h2c": ([], 64, 1),
    "h2c-mux": ([], 4, 16),
}
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "what is the weather in Paris today",
                                                            "limit": 10}}})


def start(system, port, backend):
    if system == "mcplb":
        conf = sbs.render("mcplb.toml.tmpl", f"mcplb-{port}.toml", LISTEN=port, BACKEND=backend)
        p = sbs.spawn(["taskset", "-c", "0", f"{BIN}/mcplb", "run", "--config", conf], f"mcplb-{port}")
        sbs.wait_port(port, p)
        return p
    conf = sbs.render("envoy-mcp.yaml.tmpl", f"envoy-{port}.yaml", LISTEN=port, BACKEND=backend)
    p = sbs.spawn(["taskset", "-c", "0", ENVOY, "-c", conf, "--concurrency", "1", "--disable-hot-restart",
                   "-l", "warning"], f"envoy-{port}")
    sbs.wait_port(port, p, timeout=30)
    return p


def h2load(url, cell, n, log_file):
    flags, conns, streams = CELL_ARGS[cell]
    body = os.path.join(sbs.RUNDIR, "body.json")
    with open(body, "w") as f:
        f.write(BODY)
    argv = ["taskset", "-c", "1", "h2load", *flags, "-n", str(n), "-c", str(conns), "-m", str(streams), "-t", "1",
            "-d", body, "-H", "content-type: application/json",
            "-H", "accept: application/json, text/event-stream", "--log-file", log_file, url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    done = ok = None
    status = ""
    for line in out.splitlines():
        if line.startswith("requests:"):
            # requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout
            parts = [p.strip() for p in line.split(":", 1)[1].split(",")]
            done = int(parts[2].split()[0])
            ok = int(parts[3].split()[0])
        if line.startswith("status codes:"):
            status = line.strip()
    return done, ok, status, out


def latencies(log_file):
    """Per-request times (µs) from h2load's log: start, status, duration."""
    xs = []
    with open(log_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                xs.append(int(parts[2]))
    xs.sort()
    return xs


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else None


def run_cell(system, port, cell):
    p = STARTED[system]
    url = f"http://127.0.0.1:{port}/mcp"
    log_file = os.path.join(sbs.RUNDIR, f"{system}-{cell}.log")
    # Warm-up: connections, pools, caches.
    h2load(url, cell, 2000, log_file)
    before = sbs.cpu_ticks(p.pid)
    t0 = time.time()
    done, ok, status, out = h2load(url, cell, REQUESTS, log_file)
    secs = time.time() - t0
    ticks = sbs.cpu_ticks(p.pid) - before
    lat = latencies(log_file)
    if not ok or ok != REQUESTS:
        sbs.log(f"{system} {cell}: {ok} of {REQUESTS} succeeded ({status})\n{out[-1500:]}")
    return {
        "ok": ok, "done": done, "secs": secs, "req_s": (ok or 0) / secs if secs else None,
        "cpu_us": ticks * 1e6 / sbs.CLK_TCK / ok if ok else None,
        "p50_us": pct(lat, 0.50), "p99_us": pct(lat, 0.99), "status": status,
    }


STARTED = {}


def main():
    os.makedirs(OUT, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = sbs.loadavg()
    mock_port = BASE + 1
    sbs.start_mock(mock_port, stateless=True)
    ports = {s: BASE + 10 + i for i, s in enumerate(SYSTEMS)}
    for s in SYSTEMS:
        STARTED[s] = start(s, ports[s], mock_port)
    runs = {f"{s} {c}": [] for c in CELLS for s in SYSTEMS}
    for run in range(RUNS):
        for cell in CELLS:
            for s in SYSTEMS:
                r = run_cell(s, ports[s], cell)
                runs[f"{s} {cell}"].append(r)
                sbs.log(f"run {run + 1}/{RUNS} {s} {cell}: {r['req_s']:.0f} req/s, {r['cpu_us']:.1f} µs CPU, "
                        f"p50 {r['p50_us']} µs, p99 {r['p99_us']} µs")
    finished = datetime.datetime.now(datetime.timezone.utc)
    text = report(runs, started, sbs.loadavg(), load_start)
    stem = os.path.join(OUT, f"{started.date().isoformat()}-{RESULT_NAME}")
    facts = {"h2load": sbs.sh("h2load --version"), "envoy": sbs.sh(f"{ENVOY} --version"),
             "nproc": sbs.sh("nproc --all"), "kernel": sbs.sh("uname -r")}
    sbs.write_results(stem, text, facts, "bench/h2_side_by_side.sh", started, finished, load_start,
                      sbs.loadavg(), {"REQUESTS": REQUESTS, "RUNS": RUNS, "CELLS": CELLS, "SYSTEMS": SYSTEMS},
                      runs=runs)


def med(rs, k):
    xs = [r[k] for r in rs if r.get(k) is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else (None, None, None)


def report(runs, started, load_end, load_start):
    lines = [f"# HTTP/2 beside HTTP/1.1: mcplb and Envoy ({started.date().isoformat()})", "",
             "`bench/h2_side_by_side.sh`: the proxy on core 0 (one worker), the stateless mock and h2load on",
             "core 1, backends in HTTP/1.1; per cell, median of the runs (min-max). CPU per request is the",
             "proxy process's utime+stime over the requests; p50/p99 are h2load's per-request times in a",
             "closed loop at the cell's concurrency (queueing included).", "",
             f"Load average at start {' '.join(load_start)}, at end {' '.join(load_end)} (a shared machine: "
             "compare systems within a cell).", "",
             "| cell | system | req/s | CPU µs/req | p50 µs | p99 µs | mcplb/Envoy CPU |",
             "|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        cpu = {s: med(runs[f"{s} {cell}"], "cpu_us")[0] for s in SYSTEMS}
        for s in SYSTEMS:
            rs = runs[f"{s} {cell}"]
            rq, c, p50, p99 = (med(rs, k) for k in ("req_s", "cpu_us", "p50_us", "p99_us"))
            ratio = ""
            if s == "mcplb" and cpu.get("envoy"):
                ratio = f"{cpu['mcplb'] / cpu['envoy']:.2f}x"
            lines.append(f"| {cell} | {s} | {rq[0]:.0f} ({rq[1]:.0f}-{rq[2]:.0f}) | {c[0]:.1f} ({c[1]:.1f}-{c[2]:.1f}) "
                         f"| {p50[0]:.0f} | {p99[0]:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    finally:
        sbs.stop_all()
