#!/usr/bin/env python3
"""HTTP/3 beside HTTP/1.1 and HTTP/2, all over TLS (issue 19): mcplb and Envoy (its `mcp`
filter + router; a TLS listener with ALPN h2/http1.1 and a QUIC listener) in front of the same
mock backend, at the same paced rate in every cell, so CPU per request compares protocols at
equal load. HTTP/1.1 and HTTP/2 are driven by h2load (`--rps`), HTTP/3 by bench/h3_load.py
(aioquic: Debian's h2load has no HTTP/3), which is far slower than h2load: the rate is one that
aioquic keeps up with on one core, and the report says whether it did.

Started by bench/h3_side_by_side.sh. The process and machine helpers are side_by_side.py's.
Every process it starts is stopped by PID at exit.

Layout (2 cores): the proxy under test on core 0 (one worker), the stateless mock backend and
the load generator on core 1. Cells: h1 (HTTP/1.1 over TLS), h2 (HTTP/2 over TLS, one stream
at a time per connection), h3 (HTTP/3, one stream at a time per connection); CONNS connections
each paced at RPS requests per second. The latencies are the generators' per-request times
(h2load's --log-file, h3_load.py's log); they include the generator's own delays, which are
larger for the Python one: compare p50/p99 between systems of the same cell.

Settings (environment): REQUESTS per cell (default 20000), RUNS (3), CONNS (16), RPS per
connection (40), CELLS ("h1 h2 h3"), SYSTEMS ("mcplb envoy"), BIN (target/release), TOOLS
(../bench-tools), PYTHON (the one with aioquic: .venv/bin/python), BASE_PORT (27800), OUT,
RESULT_NAME (h3-side-by-side).
"""

import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2_side_by_side as h2sbs  # noqa: E402 - its h2load log reader and medians
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

ROOT = sbs.ROOT
REQUESTS = int(os.environ.get("REQUESTS", 20000))
RUNS = int(os.environ.get("RUNS", 3))
CONNS = int(os.environ.get("CONNS", 16))
RPS = int(os.environ.get("RPS", 40))
CELLS = os.environ.get("CELLS", "h1 h2 h3").split()
SYSTEMS = os.environ.get("SYSTEMS", "mcplb envoy").split()
BIN = sbs.BIN = os.environ.get("BIN", sbs.BIN)
TOOLS = os.path.abspath(os.environ.get("TOOLS", os.path.join(ROOT, "..", "bench-tools")))
PYTHON = os.environ.get("PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))
BASE = int(os.environ.get("BASE_PORT", 27800))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
RESULT_NAME = os.environ.get("RESULT_NAME", "h3-side-by-side")
ENVOY = os.path.join(TOOLS, "venv", "bin", "envoy")
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "what is the weather in Paris today",
                                                            "limit": 10}}})


def start(system, port, port_h3, backend, cert, key):
    kv = dict(LISTEN=port, LISTEN_H3=port_h3, BACKEND=backend, CERT=cert, KEY=key)
    if system == "mcplb":
        conf = sbs.render("mcplb-h3.toml.tmpl", f"mcplb-{port}.toml", **kv)
        p = sbs.spawn(["taskset", "-c", "0", f"{BIN}/mcplb", "run", "--config", conf], f"mcplb-{port}")
        sbs.wait_port(port, p)
        return p
    conf = sbs.render("envoy-h3.yaml.tmpl", f"envoy-{port}.yaml", **kv)
    p = sbs.spawn(["taskset", "-c", "0", ENVOY, "-c", conf, "--concurrency", "1", "--disable-hot-restart",
                   "-l", "warning"], f"envoy-{port}")
    sbs.wait_port(port, p, timeout=30)
    return p


def body_file():
    path = os.path.join(sbs.RUNDIR, "body.json")
    with open(path, "w") as f:
        f.write(BODY)
    return path


def h2load(port, cell, n, log_file):
    """(ok, failed, secs) of n requests over TLS (h1: --h1; h2: ALPN h2)."""
    flags = ["--h1"] if cell == "h1" else []
    argv = ["taskset", "-c", "1", "h2load", *flags, "-n", str(n), "-c", str(CONNS), "-m", "1", "-t", "1",
            "--rps", str(RPS), "-d", body_file(), "-H", "content-type: application/json",
            "-H", "accept: application/json, text/event-stream", "--log-file", log_file,
            f"https://127.0.0.1:{port}/mcp"]
    t0 = time.time()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    secs = time.time() - t0
    ok = failed = 0
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("requests:"):
            parts = [p.strip() for p in line.split(":", 1)[1].split(",")]
            ok = int(parts[3].split()[0])
            failed = n - ok
    if ok != n:
        sbs.log(f"h2load {cell}: {ok} of {n}\n{(r.stdout + r.stderr)[-1500:]}")
    return ok, failed, secs, None


def h3load(port, n, log_file):
    """(ok, failed, secs, generator CPU s) of n requests over HTTP/3."""
    argv = ["taskset", "-c", "1", PYTHON, os.path.join(ROOT, "bench", "h3_load.py"), "--port", str(port),
            "--connections", str(CONNS), "--rps", str(RPS), "--requests", str(n), "--body", body_file(),
            "--log", log_file]
    before = os.times()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    after = os.times()
    gen_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sbs.log(f"h3_load failed:\n{(r.stdout + r.stderr)[-2000:]}")
        return 0, n, 0.0, gen_cpu
    if res["ok"] != n:
        sbs.log(f"h3_load: {res['ok']} of {n} ({res['failed']} failed)\n{r.stderr[-1500:]}")
    return res["ok"], res["failed"], res["secs"], gen_cpu


def latencies(cell, log_file):
    """Per-request times (µs): h3_load.py writes one per line, h2load its log's columns."""
    if cell != "h3":
        return h2sbs.latencies(log_file)
    with open(log_file) as f:
        return sorted(int(x) for x in f.read().split())


def run_cell(system, ports, cell):
    p = STARTED[system]
    log_file = os.path.join(sbs.RUNDIR, f"{system}-{cell}.log")
    go = (lambda n: h3load(ports[1], n, log_file)) if cell == "h3" else (lambda n: h2load(ports[0], cell, n, log_file))
    go(min(2000, REQUESTS))  # warm-up: connections, pools, caches
    before = sbs.cpu_ticks(p.pid)
    ok, failed, secs, gen_cpu = go(REQUESTS)
    ticks = sbs.cpu_ticks(p.pid) - before
    lat = latencies(cell, log_file)
    return {
        "ok": ok, "failed": failed, "secs": secs, "req_s": ok / secs if secs else None,
        "target_req_s": CONNS * RPS,
        "cpu_us": ticks * 1e6 / sbs.CLK_TCK / ok if ok else None,
        "gen_cpu_share": gen_cpu / secs if gen_cpu is not None and secs else None,
        "p50_us": h2sbs.pct(lat, 0.50), "p99_us": h2sbs.pct(lat, 0.99),
    }


STARTED = {}


def main():
    os.makedirs(OUT, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = sbs.loadavg()
    cert, key, _ = sbs.make_cert()
    mock_port = BASE + 1
    sbs.start_mock(mock_port, stateless=True)
    ports = {s: (BASE + 10 + 2 * i, BASE + 11 + 2 * i) for i, s in enumerate(SYSTEMS)}
    for s in SYSTEMS:
        STARTED[s] = start(s, *ports[s], mock_port, cert, key)
    runs = {f"{s} {c}": [] for c in CELLS for s in SYSTEMS}
    for run in range(RUNS):
        for cell in CELLS:
            for s in SYSTEMS:
                r = run_cell(s, ports[s], cell)
                runs[f"{s} {cell}"].append(r)
                gen = f", generator {r['gen_cpu_share'] * 100:.0f} % of a core" if r["gen_cpu_share"] else ""
                sbs.log(f"run {run + 1}/{RUNS} {s} {cell}: {r['req_s'] or 0:.0f} req/s (target {CONNS * RPS}), "
                        f"{r['cpu_us'] or 0:.1f} µs CPU, p50 {r['p50_us']} µs, p99 {r['p99_us']} µs{gen}")
    finished = datetime.datetime.now(datetime.timezone.utc)
    text = report(runs, started, sbs.loadavg(), load_start)
    stem = os.path.join(OUT, f"{started.date().isoformat()}-{RESULT_NAME}")
    facts = {"h2load": sbs.sh("h2load --version"), "envoy": sbs.sh(f"{ENVOY} --version"),
             "aioquic": sbs.sh(f"{PYTHON} -c 'import aioquic; print(aioquic.__version__)'"),
             "nproc": sbs.sh("nproc --all"), "kernel": sbs.sh("uname -r")}
    sbs.write_results(stem, text, facts, "bench/h3_side_by_side.sh", started, finished, load_start,
                      sbs.loadavg(), {"REQUESTS": REQUESTS, "RUNS": RUNS, "CONNS": CONNS, "RPS": RPS,
                                      "CELLS": CELLS, "SYSTEMS": SYSTEMS}, runs=runs)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def report(runs, started, load_end, load_start):
    lines = [f"# HTTP/3 beside HTTP/1.1 and HTTP/2 over TLS: mcplb and Envoy ({started.date().isoformat()})", "",
             "`bench/h3_side_by_side.sh`: the proxy on core 0 (one worker), the stateless mock and the load",
             f"generator on core 1, backends in HTTP/1.1; {CONNS} connections each paced at {RPS} req/s",
             f"(target {CONNS * RPS} req/s) in every cell; per cell, median of the runs (min-max). CPU per",
             "request is the proxy process's utime+stime over the requests; p50/p99 are the generator's",
             "per-request times (h2load for h1/h2, aioquic in Python for h3: its own delays are in them).", "",
             f"Load average at start {' '.join(load_start)}, at end {' '.join(load_end)} (a shared machine: "
             "compare systems within a cell).", "",
             "| cell | system | req/s | CPU µs/req | p50 µs | p99 µs | mcplb/Envoy CPU | h3 generator CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        cpu = {s: h2sbs.med(runs[f"{s} {cell}"], "cpu_us")[0] for s in SYSTEMS}
        for s in SYSTEMS:
            rs = runs[f"{s} {cell}"]
            rq, c, p50, p99, gen = (h2sbs.med(rs, k) for k in ("req_s", "cpu_us", "p50_us", "p99_us", "gen_cpu_share"))
            ratio = ""
            if s == "mcplb" and cpu.get("envoy") and cpu.get("mcplb"):
                ratio = f"{cpu['mcplb'] / cpu['envoy']:.2f}x"
            g = f"{gen[0] * 100:.0f} %" if gen[0] is not None else ""
            lines.append(f"| {cell} | {s} | {fmt(rq[0], '.0f')} ({fmt(rq[1], '.0f')}-{fmt(rq[2], '.0f')}) "
                         f"| {fmt(c[0], '.1f')} ({fmt(c[1], '.1f')}-{fmt(c[2], '.1f')}) | {fmt(p50[0], '.0f')} "
                         f"| {fmt(p99[0], '.0f')} | {ratio} | {g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    finally:
        sbs.stop_all()
