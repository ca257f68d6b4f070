#!/usr/bin/env python3
"""mcplb-load against wrk on the same closed-loop target (issue #7: they must agree within 10 %).

Started by bench/load_vs_wrk.sh (which installs wrk, builds mcplb-load and waits for a quiet
machine). Python 3 standard library only; the process helpers are side_by_side.py's. Every process
it starts is stopped by PID at exit.

Layout (2 cores): the mock MCP backend (`mcplb-load mock --threads 1`, release build) alone on
MOCK_CORE, the load tool alone on LOAD_CORE: `wrk -t1 -cN` or `mcplb-load run --threads 1
--connections N`, closed loop, no warm-up for either, the same request bytes (one
`tools/call` of `echo`, stateless 2026-07-28 or within a session). The two tools run in turn,
A B B A A B ..., so slow drifts of a shared machine hit both alike; each pair gives a ratio
mcplb-load req/s / wrk req/s, and the median ratio is the figure.

Settings (environment):
  DURATION   seconds per run (default 5)
  RUNS       counted pairs per mode (default 9; one more uncounted pair warms up each mode)
  CONNS      connections (default 64)
  MODES      "stateless session" (default both)
  LOAD_CORE  core of the load tool (default 0)
  MOCK_CORE  core of the mock backend (default 1)
  BASE_PORT  ports BASE+1 (stateless mock) and BASE+2 (stateful mock) (default 27100)
  BIN        directory holding the release mcplb-load (default target/release)
  OUT        results directory (default bench/results)
  TAG        suffix of the results files' names (default none)

`python3 bench/load_vs_wrk.py --report bench/results/<date>-load-vs-wrk.json` writes the markdown
again from the saved runs.
"""

import datetime
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

ROOT = sbs.ROOT
DURATION = int(os.environ.get("DURATION", 5))
RUNS = int(os.environ.get("RUNS", 9))
CONNS = int(os.environ.get("CONNS", 64))
MODES = os.environ.get("MODES", "stateless session").split()
LOAD_CORE = os.environ.get("LOAD_CORE", "0")
MOCK_CORE = os.environ.get("MOCK_CORE", "1")
BASE = int(os.environ.get("BASE_PORT", 27100))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
TAG = os.environ.get("TAG", "")
PORTS = {"stateless": BASE + 1, "session": BASE + 2}

TOOL = "echo"
ARGS = {"query": "what is the weather in Paris today", "limit": 10}
# mcplb-load's ids are 10-digit integers patched into a pre-rendered body; wrk sends a fixed one
# of the same width, so both bodies have the same bytes but for the id's digits.
WRK_ID = 1000000042
STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def body(stateless):
    """The request body, byte for byte as mcplb-load renders it (keys sorted, no spaces)."""
    params = {"arguments": ARGS, "name": TOOL}
    if stateless:
        params["_meta"] = STATELESS_META
    p = json.dumps(params, separators=(",", ":"), sort_keys=True)
    return f'{{"jsonrpc":"2.0","id":{WRK_ID},"method":"tools/call","params":{p}}}'


def headers(stateless, session):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if stateless:
        h.update({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": TOOL})
    else:
        h.update({"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"})
    return h


def open_session(port):
    """initialize + notifications/initialized on the stateful mock; the session wrk will use."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "load_vs_wrk", "version": "1"}}}
    c.request("POST", "/mcp", json.dumps(init),
              {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    r = c.getresponse()
    r.read()
    sid = r.getheader("Mcp-Session-Id")
    if r.status != 200 or not sid:
        raise RuntimeError(f"initialize on the stateful mock: HTTP {r.status}, session {sid!r}")
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    c.request("POST", "/mcp", json.dumps(note), headers(False, sid))
    r = c.getresponse()
    r.read()
    c.close()
    if r.status not in (200, 202):
        raise RuntimeError(f"notifications/initialized: HTTP {r.status}")
    return sid


def check_same_answer(port, mode, session):
    """Sends wrk's request once and returns the answer's status and body length (a sanity check
    that the target answers it with a result, not an error)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/mcp", body(mode == "stateless"), headers(mode == "stateless", session))
    r = c.getresponse()
    data = r.read()
    c.close()
    ans = json.loads(data)
    if r.status != 200 or "result" not in ans or ans.get("id") != WRK_ID:
        raise RuntimeError(f"{mode}: the target answered {r.status} {data[:200]!r}")
    return len(data)


def write_lua(mode, session):
    path = os.path.join(sbs.RUNDIR, f"{mode}.lua")
    lines = ['wrk.method = "POST"', "wrk.body = '" + body(mode == "stateless") + "'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers(mode == "stateless", session).items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_tool(argv):
    """Runs one tool to the end; returns its stdout and its own CPU seconds (rusage of the child)."""
    t0 = time.time()
    c0 = sbs.core_times()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    sbs.STARTED.append(p)
    p._bench_name = argv[3]
    out, err = p.communicate(timeout=DURATION + 60)
    sbs.STARTED.remove(p)
    wall = time.time() - t0
    c1 = sbs.core_times()
    busy = sum(c1[c][0] - c0[c][0] for c in c1 if c in c0)
    total = sum(c1[c][1] - c0[c][1] for c in c1 if c in c0)
    return out.decode(errors="replace"), err.decode(errors="replace"), wall, busy, total


def measure(tool, mode, lua, mock_pid):
    url = f"http://127.0.0.1:{PORTS[mode]}/mcp"
    if tool == "wrk":
        argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "-s", lua, url]
    else:
        argv = ["taskset", "-c", LOAD_CORE, f"{BIN}/mcplb-load", "run", "--url", url, "--connections",
                str(CONNS), "--threads", "1", "--duration", f"{DURATION}s", "--warmup", "0s",
                "--tool", TOOL, "--args", json.dumps(ARGS, separators=(",", ":")), "--json", "--quiet"]
        if mode == "stateless":
            argv.append("--stateless")
    ru0 = os.times()
    m0 = sbs.cpu_ticks(mock_pid)
    out, err, wall, busy, total = run_tool(argv)
    ru1 = os.times()
    mock_s = (sbs.cpu_ticks(mock_pid) - m0) / sbs.CLK_TCK
    tool_s = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
    self_s = (ru1.user - ru0.user) + (ru1.system - ru0.system)
    if tool == "wrk":
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    else:
        try:
            j = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"mcplb-load failed: {out} {err}")
        errors = j["errors"]["total"]
        reqs = j["ok"] + errors
        rps = j["throughput_rps"]
    cores = os.cpu_count() or 2
    busy_s = busy / sbs.CLK_TCK
    return {
        "tool": tool, "mode": mode, "rps": round(rps, 1), "requests": reqs, "errors": errors,
        "tool_cpu_s": round(tool_s, 3), "tool_cpu_pct": round(100 * tool_s / wall, 1),
        "tool_us_per_req": round(tool_s * 1e6 / reqs, 2) if reqs else None,
        "mock_cpu_pct": round(100 * mock_s / wall, 1),
        "mock_us_per_req": round(mock_s * 1e6 / reqs, 2) if reqs else None,
        "foreign_pct": round(max(0.0, 100 * (busy_s - tool_s - mock_s - self_s) / wall), 1),
        "busy_pct_of_all": round(100 * busy / total, 1) if total else None,
        "cores": cores, "wall_s": round(wall, 2),
    }


def median_spread(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}–{fmt(max(xs))}]"


def report(res, facts, command, started, finished, load_start, load_end):
    L = [f"# mcplb-load vs wrk on the same closed-loop target ({started:%Y-%m-%d})\n"]
    L.append("Issue #7's first point: `mcplb-load` must agree with `wrk` within 10 % on the same "
             "closed-loop target. Agreement = mcplb-load req/s ÷ wrk req/s, per pair of runs taken in "
             "turn; the figure is the median of the pairs.\n")
    L.append(f"- Machine: {facts['nproc']} cores ({facts['cpu']}), kernel {facts['kernel']}; "
             f"{facts['wrk']}; {facts['rustc']}; mcplb commit {facts['mcplb_commit']}"
             f"{' (uncommitted changes)' if facts['mcplb_dirty'] else ''}.")
    L.append(f"- Load average at start {' '.join(load_start)}, at end {' '.join(load_end)}. "
             "The machine is shared: *foreign* is the CPU used by processes not in the benchmark, in % of "
             "one core, during each run.")
    where = (f"alone on core {MOCK_CORE}" if MOCK_CORE != LOAD_CORE
             else f"on core {MOCK_CORE}, shared with the load tool (the side-by-side layout)")
    L.append(f"- Target: `mcplb-load mock --threads 1` (release), {where}; stateless "
             f"(`--stateless`) for the stateless mode, with sessions for the session mode. Load tool "
             f"on core {LOAD_CORE}: `wrk -t1 -c{CONNS} -d{DURATION}s -s MODE.lua` and `mcplb-load run "
             f"--threads 1 --connections {CONNS} --duration {DURATION}s --warmup 0s` (closed loop, one "
             "thread, the same connections).")
    L.append(f"- Request: POST /mcp, `tools/call` of `{TOOL}`; the same body bytes from both tools but for "
             "the id digits (mcplb-load: a new 10-digit id per call, checked in the answer; wrk: a fixed "
             "one). Stateless: `MCP-Protocol-Version: 2026-07-28`, `Mcp-Method`, `Mcp-Name` and `_meta`. "
             "Session: mcplb-load opens one session per connection (initialize, "
             "notifications/initialized); wrk sends one session, opened by this script, on every "
             "connection.")
    L.append("- mcplb-load parses every answer (HTTP head, JSON-RPC envelope, id, result or error); wrk "
             "counts bytes and statuses only.")
    L.append(f"- Order: A B B A … ({RUNS} counted pairs per mode after one uncounted pair). "
             f"Command: `{command}`.\n")
    for mode in MODES:
        pairs = res.get(mode, [])
        if not pairs:
            continue
        ratios = [p["ratio"] for p in pairs]
        w = [p["wrk"] for p in pairs]
        m = [p["mcplb-load"] for p in pairs]
        med = statistics.median(ratios)
        verdict = "within" if 0.9 <= med <= 1.1 else "NOT within"
        L.append(f"## {mode}\n")
        L.append(f"**Agreement {med:.3f}** (median of {len(ratios)} pairs, spread {min(ratios):.3f}–"
                 f"{max(ratios):.3f}): {verdict} 0.90–1.10.\n")
        L.append("| figure | wrk | mcplb-load |")
        L.append("|---|---|---|")
        k = lambda x: f"{x / 1000:.1f}k"  # noqa: E731
        f2 = lambda x: f"{x:.2f}"  # noqa: E731
        f0 = lambda x: f"{x:.0f}"  # noqa: E731
        for name, key, fmt in [("req/s", "rps", k), ("tool CPU µs per request", "tool_us_per_req", f2),
                               ("tool CPU % of its core", "tool_cpu_pct", f0),
                               ("mock CPU µs per request", "mock_us_per_req", f2),
                               ("mock CPU % of its core", "mock_cpu_pct", f0),
                               ("foreign CPU % (one core = 100)", "foreign_pct", f0),
                               ("errors", "errors", f0)]:
            L.append(f"| {name} | {median_spread([r[key] for r in w], fmt)} | "
                     f"{median_spread([r[key] for r in m], fmt)} |")
        cpu_ratio = [a["tool_us_per_req"] / b["tool_us_per_req"] for a, b in zip(m, w)
                     if a["tool_us_per_req"] and b["tool_us_per_req"]]
        if cpu_ratio:
            L.append(f"\nTool CPU per request, mcplb-load ÷ wrk: {statistics.median(cpu_ratio):.2f} "
                     f"[{min(cpu_ratio):.2f}–{max(cpu_ratio):.2f}]. Medians [min–max] over the pairs.\n")
        sat = [r for r in m if r["tool_cpu_pct"] >= 90]
        L.append(f"Bottleneck: the mock's core was at {median_spread([r['mock_cpu_pct'] for r in w + m], f0)} % "
                 f"over all runs; mcplb-load's own core at {median_spread([r['tool_cpu_pct'] for r in m], f0)} % "
                 f"({len(sat)} of {len(m)} runs at 90 % or more), wrk's at "
                 f"{median_spread([r['tool_cpu_pct'] for r in w], f0)} %.\n")
        used = sum(statistics.median(r[k] for r in w + m) for k in ("mock_cpu_pct", "tool_cpu_pct", "foreign_pct"))
        if used < 100 * (os.cpu_count() or 2) * 0.8 and len(sat) == 0:
            L.append("Neither the mock nor a tool kept its core busy: the closed loop was bound by the time "
                     "of each round trip (wake-ups between processes, across cores when they sit on two), not "
                     "by either side's CPU; both tools pay that alike. Other processes used a median "
                     f"{statistics.median(r['foreign_pct'] for r in w + m):.0f} % of a core meanwhile.\n")
        foreign = statistics.median(r["foreign_pct"] for r in w + m)
        if foreign > 20 and used >= 100 * (os.cpu_count() or 2) * 0.8:
            L.append(f"The machine was busy: other processes used a median {foreign:.0f} % of a core during "
                     "these runs, so neither the mock nor the tool had its core to itself. Each run's req/s then "
                     "measures the CPU share the scheduler gave the mock and the tool at that moment as much as "
                     "the tools, which is the per-pair spread above. The tool CPU per request (the tool's own "
                     "rusage over its own requests) does not depend on that share and compares what the tools "
                     "cost; the mock CPU per request shows what each costs the target.\n")
        L.append("| pair | wrk req/s | mcplb-load req/s | ratio | wrk µs/req | mcplb-load µs/req | foreign % (wrk, mcplb-load) |")
        L.append("|---|---|---|---|---|---|---|")
        for i, p in enumerate(pairs, 1):
            a, b = p["wrk"], p["mcplb-load"]
            L.append(f"| {i} | {a['rps']:.0f} | {b['rps']:.0f} | {p['ratio']:.3f} | {a['tool_us_per_req']} | "
                     f"{b['tool_us_per_req']} | {a['foreign_pct']:.0f}, {b['foreign_pct']:.0f} |")
        L.append("")
    L.append(f"Ran {started:%H:%M}–{finished:%H:%M}. Raw runs: the `.json` file beside this one.")
    return "\n".join(L) + "\n"


def rerender(path):
    """Writes the markdown again from a saved `.json` (after a change to the report code)."""
    global RUNS, DURATION, CONNS, MODES, LOAD_CORE, MOCK_CORE
    with open(path) as f:
        d = json.load(f)
    st = d["settings"]
    RUNS, DURATION, CONNS, MODES = st["RUNS"], st["DURATION"], st["CONNS"], st["MODES"]
    LOAD_CORE, MOCK_CORE = st["LOAD_CORE"], st["MOCK_CORE"]
    res = {}
    for mode in MODES:
        by_run = {}
        for r in d["runs"]:
            if r["mode"] == mode and r["counted"]:
                by_run.setdefault(r["run"], {})[r["tool"]] = r
        pairs = []
        for run in sorted(by_run):
            p = by_run[run]
            if "wrk" in p and "mcplb-load" in p:
                p["ratio"] = p["mcplb-load"]["rps"] / p["wrk"]["rps"] if p["wrk"]["rps"] else 0.0
                pairs.append(p)
        res[mode] = pairs
    iso = datetime.datetime.fromisoformat
    text = report(res, d["facts"], d["command"], iso(d["started"]), iso(d["finished"]), d["load_start"],
                  d["load_end"])
    md = path[: -len(".json")] + ".md"
    with open(md, "w") as f:
        f.write(text)
    print(f"wrote {md}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return rerender(sys.argv[2])
    signal.signal(signal.SIGTERM, sbs.on_signal)
    signal.signal(signal.SIGINT, sbs.on_signal)
    started = datetime.datetime.now()
    os.makedirs(OUT, exist_ok=True)
    stem = os.path.join(OUT, f"{started:%Y-%m-%d}-load-vs-wrk" + (f"-{TAG}" if TAG else ""))
    for port in PORTS.values():
        if not sbs.port_free(port):
            sys.exit(f"port {port} is in use; set BASE_PORT to another base (now {BASE})")
    facts = sbs.machine_facts()
    load_start = sbs.loadavg()
    command = os.environ.get("LVW_COMMAND", "bench/load_vs_wrk.sh")
    res, raw = {}, []
    try:
        for mode in MODES:
            port = PORTS[mode]
            argv = ["taskset", "-c", MOCK_CORE, f"{BIN}/mcplb-load", "mock", "--listen", f"127.0.0.1:{port}",
                    "--threads", "1", "--name", "bench"]
            if mode == "stateless":
                argv.append("--stateless")
            mock = sbs.spawn(argv, f"mock-{mode}")
            sbs.wait_port(port, mock)
            session = None if mode == "stateless" else open_session(port)
            answer_bytes = check_same_answer(port, mode, session)
            lua = write_lua(mode, session)
            sbs.log(f"{mode}: mock pid {mock.pid} on core {MOCK_CORE}, answer {answer_bytes} bytes")
            pairs = []
            for run in range(RUNS + 1):
                order = ["mcplb-load", "wrk"] if run % 2 else ["wrk", "mcplb-load"]
                pair = {}
                for tool in order:
                    r = measure(tool, mode, lua, mock.pid)
                    r["run"], r["counted"] = run, run > 0
                    raw.append(r)
                    pair[tool] = r
                    sbs.log(f"{mode} run {run} {tool:10s}: {r['rps']:9.0f} req/s, tool {r['tool_us_per_req']} "
                            f"µs/req ({r['tool_cpu_pct']} %), mock {r['mock_cpu_pct']} %, foreign "
                            f"{r['foreign_pct']} %, errors {r['errors']}")
                if run == 0:
                    continue  # warm-up pair
                pair["ratio"] = pair["mcplb-load"]["rps"] / pair["wrk"]["rps"] if pair["wrk"]["rps"] else 0.0
                sbs.log(f"{mode} pair {run}: ratio {pair['ratio']:.3f}")
                pairs.append(pair)
            res[mode] = pairs
            sbs.stop(mock)
    finally:
        sbs.stop_all()
    finished = datetime.datetime.now()
    load_end = sbs.loadavg()
    text = report(res, facts, command, started, finished, load_start, load_end)
    settings = {"DURATION": DURATION, "RUNS": RUNS, "CONNS": CONNS, "MODES": MODES,
                "LOAD_CORE": LOAD_CORE, "MOCK_CORE": MOCK_CORE}
    sbs.write_results(stem, text, facts, command, started, finished, load_start, load_end, settings,
                      bodies={m: body(m == "stateless") for m in MODES}, runs=raw)


if __name__ == "__main__":
    main()
