#!/usr/bin/env python3
"""A/B of two builds of the mock MCP backend under the same load (issue #18: a faster mock).

Python 3 standard library only; the process and machine helpers are side_by_side.py's. Every
process it starts is stopped by PID at exit.

Layout (2 cores): the mock (`mcplb-load mock --threads 1`, release build) alone on MOCK_CORE, the
load generator (`mcplb-load run --threads 1`, the same binary for both sides) alone on LOAD_CORE,
closed loop, CONNS connections, no warm-up, one `tools/call` of `echo` per request (stateless
2026-07-28, or in sessions: one per connection). Each measurement starts a fresh mock. The two
builds run in turn, A B B A ..., one uncounted pair first; each pair gives the ratio after/before
of the mock's CPU µs per request (utime+stime from /proc/<pid>/stat over the run, divided by the
requests answered) and of the requests per second.

Settings (environment):
  BEFORE     mcplb-load holding the old mock (required)
  AFTER      mcplb-load holding the new mock (required)
  LOAD_BIN   mcplb-load that drives the load (default AFTER)
  DURATION   seconds per run (default 5)
  RUNS       counted pairs per mode (default 7)
  CONNS      connections (default 64)
  MODES      "stateless session" (default both)
  LOAD_CORE  core of the load generator (default 0)
  MOCK_CORE  core of the mock (default 1)
  BASE_PORT  port of the mock (default 27300)
  OUT        results directory (default bench/results)
  TAG        suffix of the results files' names (default none)

`python3 bench/mock_ab.py --report bench/results/<date>-mock-ab[-TAG].json` writes the markdown
again from the saved runs.
"""

import datetime
import json
import os
import signal
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

ROOT = sbs.ROOT
BINS = {"before": os.environ.get("BEFORE", ""), "after": os.environ.get("AFTER", "")}
LOAD_BIN = os.environ.get("LOAD_BIN", BINS["after"])
DURATION = int(os.environ.get("DURATION", 5))
RUNS = int(os.environ.get("RUNS", 7))
CONNS = int(os.environ.get("CONNS", 64))
MODES = os.environ.get("MODES", "stateless session").split()
LOAD_CORE = os.environ.get("LOAD_CORE", "0")
MOCK_CORE = os.environ.get("MOCK_CORE", "1")
PORT = int(os.environ.get("BASE_PORT", 27300))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
TAG = os.environ.get("TAG", "")
ARGS = {"query": "what is the weather in Paris today", "limit": 10}


def measure(side, mode):
    """One run against a fresh mock of `side`; returns its figures."""
    argv = ["taskset", "-c", MOCK_CORE, BINS[side], "mock", "--listen", f"127.0.0.1:{PORT}",
            "--threads", "1", "--name", "bench"]
    if mode == "stateless":
        argv.append("--stateless")
    mock = sbs.spawn(argv, f"mock-{side}")
    try:
        sbs.wait_port(PORT, mock)
        load = ["taskset", "-c", LOAD_CORE, LOAD_BIN, "run", "--url", f"http://127.0.0.1:{PORT}/mcp",
                "--connections", str(CONNS), "--threads", "1", "--duration", f"{DURATION}s",
                "--warmup", "0s", "--tool", "echo", "--args", json.dumps(ARGS, separators=(",", ":")),
                "--json", "--quiet"]
        if mode == "stateless":
            load.append("--stateless")
        m0 = sbs.cpu_ticks(mock.pid)
        r = subprocess.run(load, capture_output=True, text=True, timeout=DURATION + 60)
        mock_s = (sbs.cpu_ticks(mock.pid) - m0) / sbs.CLK_TCK
    finally:
        sbs.stop(mock)
    try:
        j = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mcplb-load failed: {r.stdout} {r.stderr}")
    reqs = j["ok"] + j["errors"]["total"]
    return {
        "side": side, "mode": mode, "rps": round(j["throughput_rps"], 1), "requests": reqs,
        "errors": j["errors"]["total"], "p50_us": j["latency_us"]["p50"],
        "mock_cpu_s": round(mock_s, 3), "mock_cpu_pct": round(100 * mock_s / j["elapsed_s"], 1),
        "mock_us_per_req": round(mock_s * 1e6 / reqs, 3) if reqs else None,
    }


def med_spread(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}–{fmt(max(xs))}]"


def report(res, facts, command, started, finished, load_start, load_end, settings):
    mock_core, load_core = settings["MOCK_CORE"], settings["LOAD_CORE"]
    if mock_core == load_core:
        layout = (f"The mock (`mcplb-load mock --threads 1`) and the load (`mcplb-load run --threads 1 "
                  f"--connections {settings['CONNS']}`, closed loop, the same binary for both sides) share "
                  f"core {mock_core}, as in the side-by-side run")
    else:
        layout = (f"The mock (`mcplb-load mock --threads 1`) alone on core {mock_core}, the load "
                  f"(`mcplb-load run --threads 1 --connections {settings['CONNS']}`, closed loop, the same "
                  f"binary for both sides) alone on core {load_core}")
    lines = [
        f"# Mock MCP backend A/B ({started:%Y-%m-%d})", "",
        f"{layout}; {settings['DURATION']} s per run, a fresh mock "
        f"per run, {settings['RUNS']} counted pairs per mode taken in turn (A B B A ...) after one uncounted pair. "
        "Mock CPU is utime+stime of its process over the run, divided by the requests answered. "
        "Median [min–max]. A mock CPU share (last two columns) well below 100 % means the mock did not "
        "saturate its core: req/s then follow the load generator and the machine's other work, and "
        "the CPU per request is the figure to read.", "",
        "| mode | mock CPU µs/req before | after | after ÷ before (per pair) | req/s before | after | "
        "after ÷ before | mock CPU % before | after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    f2 = lambda x: f"{x:.2f}"  # noqa: E731
    f3 = lambda x: f"{x:.3f}"  # noqa: E731
    f0 = lambda x: f"{x:.0f}"  # noqa: E731
    for mode, pairs in res.items():
        b = [p["before"] for p in pairs]
        a = [p["after"] for p in pairs]
        cpu_ratio = [p["after"]["mock_us_per_req"] / p["before"]["mock_us_per_req"] for p in pairs
                     if p["before"]["mock_us_per_req"] and p["after"]["mock_us_per_req"]]
        rps_ratio = [p["after"]["rps"] / p["before"]["rps"] for p in pairs if p["before"]["rps"]]
        lines.append(
            f"| {mode} | {med_spread([x['mock_us_per_req'] for x in b], f2)} | "
            f"{med_spread([x['mock_us_per_req'] for x in a], f2)} | {med_spread(cpu_ratio, f3)} | "
            f"{med_spread([x['rps'] for x in b], f0)} | {med_spread([x['rps'] for x in a], f0)} | "
            f"{med_spread(rps_ratio, f3)} | {med_spread([x['mock_cpu_pct'] for x in b], f0)} | "
            f"{med_spread([x['mock_cpu_pct'] for x in a], f0)} |")
        errs = sum(x["errors"] for x in a + b)
        if errs:
            lines.append(f"\n{mode}: {errs} errors over the counted runs.")
    lines += [
        "",
        "## Machine", "",
        *[f"- {k}: {v}" for k, v in facts.items()],
        f"- load average (1, 5, 15 min) at start {load_start}, at end {load_end}",
        f"- started {started:%Y-%m-%d %H:%M:%S}, finished {finished:%H:%M:%S}",
        "- other work ran on the machine during the run (its load average above); the ratios are "
        "taken pair by pair for that reason",
        "",
        "## Command", "",
        "```", command, "```", "",
    ]
    return "\n".join(lines)


def pairs_of(runs):
    """{mode: [{"before": run, "after": run}]} from the saved runs (counted ones only)."""
    res = {}
    for r in runs:
        if not r["counted"]:
            continue
        pairs = res.setdefault(r["mode"], {})
        pairs.setdefault(r["run"], {})[r["side"]] = r
    return {m: [p[k] for k in sorted(p)] for m, p in res.items()}


def rerender(path):
    with open(path) as f:
        d = json.load(f)
    text = report(pairs_of(d["runs"]), d["facts"], d["command"],
                  datetime.datetime.fromisoformat(d["started"]), datetime.datetime.fromisoformat(d["finished"]),
                  d["load_start"], d["load_end"], d["settings"])
    with open(path[: -len(".json")] + ".md", "w") as f:
        f.write(text)
    print(text)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return rerender(sys.argv[2])
    if not (BINS["before"] and BINS["after"]):
        sys.exit("set BEFORE and AFTER to the two mcplb-load binaries")
    signal.signal(signal.SIGTERM, sbs.on_signal)
    signal.signal(signal.SIGINT, sbs.on_signal)
    if not sbs.port_free(PORT):
        sys.exit(f"port {PORT} is in use; set BASE_PORT")
    started = datetime.datetime.now()
    os.makedirs(OUT, exist_ok=True)
    stem = os.path.join(OUT, f"{started:%Y-%m-%d}-mock-ab" + (f"-{TAG}" if TAG else ""))
    facts = {k: v for k, v in sbs.machine_facts().items()
             if k in ("nproc", "cpu", "kernel", "rustc", "python", "mcplb_commit", "mcplb_dirty")}
    load_start = sbs.loadavg()
    command = os.environ.get("AB_COMMAND", "BEFORE=... AFTER=... python3 bench/mock_ab.py")
    res, raw = {}, []
    try:
        for mode in MODES:
            pairs = []
            for run in range(RUNS + 1):
                order = ["after", "before"] if run % 2 else ["before", "after"]
                pair = {}
                for side in order:
                    r = measure(side, mode)
                    r["run"], r["counted"] = run, run > 0
                    raw.append(r)
                    pair[side] = r
                    sbs.log(f"{mode} run {run} {side:6s}: {r['rps']:9.0f} req/s, mock {r['mock_us_per_req']} "
                            f"µs/req ({r['mock_cpu_pct']} %), errors {r['errors']}")
                if run > 0:
                    pairs.append(pair)
            res[mode] = pairs
    finally:
        sbs.stop_all()
    finished = datetime.datetime.now()
    load_end = sbs.loadavg()
    settings = {"DURATION": DURATION, "RUNS": RUNS, "CONNS": CONNS, "MODES": MODES,
                "LOAD_CORE": LOAD_CORE, "MOCK_CORE": MOCK_CORE}
    text = report(res, facts, command, started, finished, load_start, load_end, settings)
    sbs.write_results(stem, text, facts, command, started, finished, load_start, load_end, settings, runs=raw)


if __name__ == "__main__":
    main()
