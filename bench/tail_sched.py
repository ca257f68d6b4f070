#!/usr/bin/env python3
"""Where the open-loop tail's millisecond goes (issue 18): the tail cell of the side-by-side run
(open loop, TAIL_RATE over TAIL_CONNS connections) against each target in turn while
`perf sched record -a` traces both cores, then per process (the proxy, the mock, the load
generator) how long its threads waited between being woken (or preempted) and running
("scheduling delay") and whether the core they ran on had been idle just before (a halted vCPU woken by an
interrupt) or busy with another task.

Started by bench/tail_sched.sh. Python 3 standard library plus `perf` (Debian's linux-perf).
Settings (environment):
  TARGETS     targets in turn within each run (default "direct mcplb nginx haproxy")
  RUNS        runs (default 2)
  SECS        seconds of load per cell after 1 s of warm-up (default 8)
  REC         seconds of `perf sched record` inside each cell, from its 3rd second (default 4)
  TAIL_RATE, TAIL_CONNS   the load (default 10000 over 1000 connections)
  SPIN        cores kept from idling by a SCHED_IDLE busy loop (as side_by_side's TAIL_SPIN)
  MCPLB, LOAD_BIN         binaries (as bench/side_by_side.py)
  BASE_PORT   (default 27200), OUT (default bench/results), RESULT_NAME (default tail-sched)
"""

import datetime
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("BASE_PORT", "27200")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

TARGETS = os.environ.get("TARGETS", "direct mcplb nginx haproxy").split()
RUNS = int(os.environ.get("RUNS", 2))
SECS = int(os.environ.get("SECS", 8))
REC = int(os.environ.get("REC", 4))
RATE = int(os.environ.get("TAIL_RATE", 10000))
CONNS = int(os.environ.get("TAIL_CONNS", 1000))
SPIN = os.environ.get("SPIN", "").split()
OUT = os.environ.get("OUT", os.path.join(sbs.ROOT, "bench", "results"))
RESULT_NAME = os.environ.get("RESULT_NAME", "tail-sched")
# Scheduling delays counted, ms.
LIMITS = (0.1, 0.25, 0.5, 1.0)

LINE = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                  r"\s+(\S+)\s*$")


def timehist(path):
    """Switch-outs from `perf sched timehist --state`: (time s, cpu, pid, delay ms, run ms). The
    delay is how long the thread waited to run: from its wake-up ("sch delay"), or, when it had
    been preempted (switched out runnable, state R), the whole wait before this run (perf counts
    that as "wait time", not as a scheduling delay)."""
    out = subprocess.run(["perf", "sched", "timehist", "--state", "-i", path], capture_output=True, text=True).stdout
    rows = []
    preempted = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            tid = int(m.group(4))
            pid = int(m.group(5)) if m.group(5) else tid
            wait, delay = float(m.group(6)), float(m.group(7))
            if preempted.get(tid):
                delay = max(delay, wait)
            preempted[tid] = m.group(9).startswith("R")
            rows.append((float(m.group(1)), int(m.group(2)), pid, delay, float(m.group(8))))
    return rows


def analyse(rows, roles):
    """Per role: switch-ins, scheduling delays over each limit, how many of those began on a core
    that had been idle (no task between the previous switch-out and this switch-in), the
    longest; and per core the share of the traced time it was idle."""
    last_out = {}
    idle = {}
    span = {}
    res = {r: {"switch_ins": 0, "over": {str(x): 0 for x in LIMITS}, "over_after_idle": {str(x): 0 for x in LIMITS},
               "max_ms": 0.0, "after_idle": 0} for r in set(roles.values())}
    for t, cpu, pid, delay, run in rows:
        t_in = t - run / 1000.0
        prev = last_out.get(cpu)
        was_idle = prev is not None and t_in - prev > 2e-6
        if prev is not None:
            idle[cpu] = idle.get(cpu, 0.0) + max(0.0, t_in - prev)
        last_out[cpu] = t
        lo, hi = span.get(cpu, (t_in, t))
        span[cpu] = (min(lo, t_in), max(hi, t))
        role = roles.get(pid)
        if role is None:
            continue
        r = res[role]
        r["switch_ins"] += 1
        r["after_idle"] += was_idle
        r["max_ms"] = max(r["max_ms"], delay)
        for x in LIMITS:
            if delay > x:
                r["over"][str(x)] += 1
                r["over_after_idle"][str(x)] += was_idle
    cores = {str(c): round(100.0 * idle.get(c, 0.0) / (hi - lo), 1) for c, (lo, hi) in span.items() if hi > lo}
    return {"roles": res, "core_idle_pct": cores}


def steal_ms():
    """Per core, the time the hypervisor ran something else while this vCPU wanted to run
    (/proc/stat's steal column), ms."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                out[m.group(1)] = int(m.group(2).split()[7]) * 1000.0 / sbs.CLK_TCK
    return out


def cell(target, pids, run):
    hgrm = os.path.join(sbs.RUNDIR, f"{target.kind}-{run}.hgrm")
    argv = ["taskset", "-c", "1", sbs.load_bin(), "run", "--url", target.url, "--connections", str(CONNS),
            "--duration", f"{SECS}s", "--warmup", "1s", "--rate", str(RATE), "--stateless",
            "--args", json.dumps(sbs.ARGS, separators=(",", ":")), "--json", "--quiet", "--hgrm", hgrm]
    s0 = steal_ms()
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(3)
    data = os.path.join(sbs.RUNDIR, f"{target.kind}-{run}.perf")
    subprocess.run(["perf", "sched", "record", "-a", "-o", data, "--", "sleep", str(REC)],
                   capture_output=True, check=True)
    out, _ = load.communicate(timeout=SECS + 60)
    s1 = steal_ms()
    j = json.loads(out.strip().splitlines()[-1])
    roles = {p: "proxy" for p in pids.get(target.kind, [])}
    roles.update({p: "mock" for p in pids["mock"]})
    roles[load.pid] = "load"
    a = analyse(timehist(data), roles)
    os.remove(data)
    return {"target": target.kind, "run": run, "latency_us": j["latency_us"], "send_lag_us": j["send_lag_us"],
            "achieved_rps": round(j["throughput_rps"], 1), "errors": j["errors"]["total"],
            "steal_ms": {c: round(s1[c] - s0.get(c, 0.0)) for c in s1}, **a}


def report(cells, started, load_start, load_end):
    L = [f"# The tail's scheduling delays: perf sched over the open-loop tail cell ({started:%Y-%m-%d})\n",
         f"Open loop {RATE} req/s over {CONNS} connections (mcplb-load, latency from the schedule), {SECS} s a cell "
         f"after 1 s of warm-up, `perf sched record -a` for {REC} s from the cell's 3rd second; proxies on core 0, "
         "mock and load generator on core 1 (as `bench/side_by_side.sh`). Scheduling delay: from a thread's "
         "wake-up (or preemption) to its running. \"After idle\": its core ran no task just before (the vCPU was halted). "
         "Steal: /proc/stat's steal time over the cell (the hypervisor ran something else while the vCPU "
         "wanted to run; 10 ms ticks).",
         f"Load average at start {' '.join(load_start)}, at end {' '.join(load_end)}. "
         + (f"Cores {', '.join(SPIN)} kept from idling by a SCHED_IDLE busy loop (SPIN).\n" if SPIN else "\n"),
         "| target | run | p99 µs | p99.9 µs | max µs | send lag max µs | role | switch-ins | after idle % | "
         + " | ".join(f"delay > {x} ms (after idle)" for x in LIMITS) + " | longest delay ms | core 0 idle % | core 1 idle % | core 0 steal ms | core 1 steal ms |",
         "|---" * (14 + len(LIMITS)) + "|"]
    for c in cells:
        lat = c["latency_us"]
        for role, r in sorted(c["roles"].items()):
            if not r["switch_ins"]:
                continue
            L.append(f"| {c['target']} | {c['run'] + 1} | {lat['p99']} | {lat['p99.9']} | {lat['max']} | "
                     f"{(c['send_lag_us'] or {}).get('max')} | {role} | {r['switch_ins']} | "
                     f"{100.0 * r['after_idle'] / r['switch_ins']:.0f} | "
                     + " | ".join(f"{r['over'][str(x)]} ({r['over_after_idle'][str(x)]})" for x in LIMITS)
                     + f" | {r['max_ms']:.3f} | {c['core_idle_pct'].get('0')} | {c['core_idle_pct'].get('1')} | "
                     f"{c['steal_ms'].get('0')} | {c['steal_ms'].get('1')} |")
    cmd = " ".join(f'{k}="{os.environ[k]}"' for k in ("TARGETS", "RUNS", "SECS", "REC", "SPIN", "MCPLB", "LOAD_BIN")
                   if os.environ.get(k)) + " bench/tail_sched.sh"
    L.append(f"\n## Command\n\n```\n{cmd.strip()}\n```\n")
    return "\n".join(L) + "\n"


def main():
    started = datetime.datetime.now()
    load_start = sbs.loadavg()
    cells = []
    sbs.LUA = sbs.write_lua()  # the warm-up's wrk script
    try:
        mock = sbs.start_mock(sbs.P_MOCK)
        targets = {"direct": mock}
        pids = {"mock": [mock.pids[0]]}
        for kd in TARGETS:
            if kd != "direct":
                targets[kd] = sbs.start_proxy(kd, sbs.PROXY_PORTS[kd], sbs.P_MOCK)
                pids[kd] = targets[kd].pids
        for kd in TARGETS:
            sbs.run_wrk(targets[kd].url, 64, 1)
        spinners = [sbs.spawn(["chrt", "--idle", "0", "taskset", "-c", c, "sh", "-c", "while :; do :; done"],
                              f"spin-{c}") for c in SPIN]
        for run in range(RUNS):
            for kd in TARGETS:
                c = cell(targets[kd], pids, run)
                cells.append(c)
                sbs.log(f"{kd} run {run + 1}: p99.9 {c['latency_us']['p99.9']} µs; "
                        + "; ".join(f"{role} >0.5 ms {r['over']['0.5']} ({r['over_after_idle']['0.5']} after idle)"
                                    for role, r in c["roles"].items()))
        for p in spinners:
            sbs.stop(p)
    finally:
        sbs.stop_all()
    load_end = sbs.loadavg()
    stem = os.path.join(OUT, f"{started:%Y-%m-%d}-{RESULT_NAME}")
    with open(stem + ".json", "w") as f:
        json.dump({"started": started.isoformat(), "load_start": load_start, "load_end": load_end, "spin": SPIN,
                   "cells": cells}, f, indent=1)
    text = report(cells, started, load_start, load_end)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
