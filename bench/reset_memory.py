#!/usr/bin/env python3
"""Memory of a mass reset of parked connections: N idle keep-alive client connections (each sent
one request and read its answer, so it is parked in mcplb's idle set), then all of them reset at
once (SO_LINGER 0, then close: an RST each), with mcplb's anonymous RSS (RssAnon) read before,
every 50 ms for the first second after (the peak), 4 s after (idle since), and 2 s after a few
requests that follow (mimalloc returns freed memory at a later allocation past its purge delay).
Then a check that the proxy still answers.

Python 3 standard library only; the process helpers are side_by_side.py's. Every process it
starts is stopped by PID at exit.

Layout (2 cores): mcplb (one worker, mimalloc's defaults) on core 0, the mock backend and this
script on core 1. Each cell starts a fresh mcplb. The builds and drivers run in turn, every run
rotating their order.

Settings (environment):
  BEFORE     mcplb build A (required)
  AFTER      mcplb build B (required)
  DRIVERS    "io-uring legacy" (default both; legacy = monoio's epoll driver)
  CONNS      parked connections reset at once (default 10000)
  RUNS       runs of every (build, driver) cell (default 3)
  CLOSE      rst (SO_LINGER 0, default) or fin (a plain close)
  BASE_PORT  ports BASE+1 (mock) and BASE+80 (mcplb) (default 25000)
  LOAD_BIN   mcplb-load for the mock (default target/release/mcplb-load)
  OUT        results directory (default bench/results); TAG: suffix of the file names
"""

import json
import os
import resource
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402 - the shared process and machine helpers

BINS = {"before": os.environ.get("BEFORE", ""), "after": os.environ.get("AFTER", "")}
DRIVERS = os.environ.get("DRIVERS", "io-uring legacy").split()
CONNS = int(os.environ.get("CONNS", 10000))
RUNS = int(os.environ.get("RUNS", 3))
CLOSE = os.environ.get("CLOSE", "rst")
BASE = int(os.environ.get("BASE_PORT", 25000))
OUT = os.environ.get("OUT", os.path.join(sbs.ROOT, "bench", "results"))
TAG = os.environ.get("TAG", "")
P_MOCK, P_MCPLB = BASE + 1, BASE + 80
LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def rss(pid):
    return sbs.rss_anon_kib(pid)


def cell(side, driver):
    """One fresh mcplb of `side` on `driver`: the RssAnon samples around a mass reset, KiB."""
    args = ("--driver", "legacy") if driver == "legacy" else ()
    t = sbs.start_proxy_plain("mcplb", P_MCPLB, P_MOCK, None, binary=BINS[side], args=args,
                              proxy_extra='client_idle_timeout = "600s"')
    pid = t.pids[0]
    try:
        req = sbs.one_request(P_MCPLB)
        s = socket.create_connection(("127.0.0.1", P_MCPLB))
        for _ in range(20):
            s.sendall(req)
            sbs.read_answer(s)
        s.close()
        socks, bad = sbs.open_idle(P_MCPLB, req, CONNS)
        time.sleep(2)
        before = rss(pid)
        t0 = time.time()
        for c in socks:
            if CLOSE == "rst":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            c.close()
        closed_s = time.time() - t0
        samples = []
        while time.time() - t0 < 1.0:
            samples.append(rss(pid))
            time.sleep(0.05)
        time.sleep(max(0.0, 4.0 - (time.time() - t0)))
        idle4 = rss(pid)
        # Traffic again: a few requests on a new connection (mimalloc purges at an allocation).
        s = socket.create_connection(("127.0.0.1", P_MCPLB))
        ok = 0
        for _ in range(20):
            s.sendall(req)
            ok += sbs.read_answer(s) == 200
        time.sleep(2)
        for _ in range(20):
            s.sendall(req)
            ok += sbs.read_answer(s) == 200
        s.close()
        after_traffic = rss(pid)
        return {"side": side, "driver": driver, "before_kib": before, "peak_kib": max(samples),
                "samples_kib": samples, "idle_4s_kib": idle4, "after_traffic_kib": after_traffic,
                "peak_rise_kib": max(samples) - before, "idle_4s_rise_kib": idle4 - before,
                "after_traffic_rise_kib": after_traffic - before, "close_s": round(closed_s, 3),
                "non_200_opening": bad, "answers_after": f"{ok}/40"}
    finally:
        t.stop()


def main():
    for side, b in BINS.items():
        if not b or not os.access(b, os.X_OK):
            sys.exit(f"{side.upper()} must name an mcplb binary")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * CONNS + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need) if hard != resource.RLIM_INFINITY else need, hard))
    name = "reset-memory" + (f"-{TAG}" if TAG else "")
    started, stem = sbs.begin_run(OUT, name, [P_MOCK, P_MCPLB], BASE)
    load_start = sbs.loadavg()
    cells = []
    try:
        sbs.start_mock(P_MOCK)
        order = [(s, d) for d in DRIVERS for s in BINS]
        for run in range(RUNS):
            k = run % len(order)
            for side, driver in order[k:] + order[:k]:
                r = cell(side, driver)
                r["run"] = run
                cells.append(r)
                sbs.log(f"run {run + 1} {side:6s} {driver:8s}: RssAnon {r['before_kib']} KiB, peak +{r['peak_rise_kib']}, "
                        f"4 s idle +{r['idle_4s_rise_kib']}, after traffic +{r['after_traffic_rise_kib']} KiB; "
                        f"answers after {r['answers_after']}")
    finally:
        sbs.stop_all()
    load_end = sbs.loadavg()
    res = {"command": " ".join(f"{k}={os.environ[k]}" for k in ("BEFORE", "AFTER", "DRIVERS", "CONNS", "RUNS", "CLOSE", "BASE_PORT")
                               if k in os.environ) + " python3 bench/reset_memory.py",
           "started": started.isoformat(), "load_start": load_start, "load_end": load_end,
           "bins": {k: os.path.realpath(v) for k, v in BINS.items()}, "conns": CONNS, "close": CLOSE, "cells": cells}
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"Mass {CLOSE} of {CONNS} parked connections: RssAnon rise over the warmed baseline, KiB, "
             f"median [min-max] of {RUNS} runs (load {load_start} -> {load_end})", "",
             "| build | driver | baseline | peak (first 1 s) | 4 s later, idle | after 40 requests + 2 s | answers after |",
             "|---|---|---|---|---|---|---|"]
    for driver in DRIVERS:
        for side in BINS:
            rs = [c for c in cells if c["side"] == side and c["driver"] == driver]

            def f(key):
                v = [c[key] for c in rs]
                return f"{statistics.median(v):.0f} [{min(v)}-{max(v)}]"
            lines.append(f"| {side} | {driver} | {f('before_kib')} | +{f('peak_rise_kib')} | +{f('idle_4s_rise_kib')} | "
                         f"+{f('after_traffic_rise_kib')} | {', '.join(c['answers_after'] for c in rs)} |")
    text = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
