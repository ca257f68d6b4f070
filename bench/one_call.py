#!/usr/bin/env python3
"""One call at a time (issue 21): the proxy's CPU per call when agents call tools one after
another, mcplb beside nginx, HAProxy and no proxy (direct) in the same run.

Started by bench/one_call.sh. Python 3 standard library, plus the process and measuring helpers
of bench/side_by_side.py (same layout: the proxy under test on core 0, one worker; the mock
backend and the load generator on core 1; loopback only). Every process it starts is stopped
by PID at exit.

The load: `mcplb-load run` with one MCP session per connection (initialize,
notifications/initialized, then `tools/call` of `echo`, about 200 bytes each way), each
connection with one call in flight at a time. THINK sets how a session waits between calls:
0 sends the next call as soon as the answer is read (back to back); N > 0 paces each session
to one call every N ms (`--rate`, scheduled sends), so connections really idle between calls
(past mcplb's 100 ms hot wait they are parked). The answers come from the bundled mock backend:
SSE (`mcplb-load mock --sse`: head, event and end of stream each written on its own, as the
Python SDK's server sends them) or plain JSON.

Figures per run: the proxy's CPU (sum of its threads' run time from /proc/PID/task/*/schedstat,
nanoseconds) over the whole load run divided by the requests mcplb-load wrote in it (session
set-up, warm-up and measured calls: `exchanges`); its wake-ups (voluntary + involuntary context
switches of its threads) per request; the calls' p50/p99 latency (measured window only) minus
direct's median; each core's busy share. Then, once: each proxy's CPU while idle, syscalls per
call (`strace -c -f`, counts only) and `perf` profiles (cpu-clock sampling; this VM has no
hardware counters).

Settings (environment):
  ROUNDS     rounds; every cell runs once per target per round, targets in turn (default 5)
  SECS       measured seconds per run, after a 1 s warm-up (default 10)
  THINK      ms between a session's calls, one cell each; 0 = back to back (default "0 250")
  SESSIONS   sessions (= connections), one cell each (default "1 8")
  ANSWERS    "sse", "json" or both (default "sse json")
  TARGETS    of direct, mcplb, nginx, haproxy (default "direct mcplb nginx haproxy")
  MCPLB      the mcplb binary (default target/release/mcplb)
  BUILDS     more mcplb builds measured beside it in the same run, "NAME=PATH ..." (target
             mcplb-NAME each; the report gives each one's per-round CPU ratio to MCPLB: an A/B);
             MCPLB_B=PATH is short for BUILDS="b=PATH"
  STATS      mcplb's `stats` (default true)
  IDLE_SECS  seconds of the idle-CPU figure (default 5; 0 skips it)
  STRACE     1 = count syscalls per call under strace, every proxy (default 1); STRACE_SECS (8)
  PERF       1 = record perf profiles of mcplb and nginx (default 1); PERF_SECS (20); PERF_KEEP=DIR
             keeps each profile there (perf-<target>.data) for `perf report`
  URING      1 = count each mcplb build's io_uring operations per request by kind (tracepoints
             io_uring:io_uring_submit_req and friends via `perf record`, cell PROFILE_CELL;
             default 1); URING_SECS (8); URING_TRACE=PATH also writes each build's events in
             order (thread, time) to PATH-<target>.txt
  PACED_SECS measured seconds of the paced cells (think > 0; default SECS): at 4 calls/s a 6 s run
             of 1 session is ~30 calls, too few for a steady CPU figure
  TOGETHER   1 = a paced cell's targets run at the same time, each loaded by its own mcplb-load,
             their starts spread evenly over the think time (default 1): the calls of mcplb and
             nginx alternate on core 0, idle in between, so both see the same machine over the
             same window and the round's ratio is a pair measured together; 0 = in turn
  SLICES     a back-to-back cell's run of each target is cut into this many slices of
             SECS/SLICES s, the targets alternating slice by slice (A B B A A B ...; default 1)
             so that a drift of the machine within the round falls on every target alike
  PROFILE_CELL  the cell strace runs: answers/sessions/think (default sse/1/250)
  PERF_CELL  the cell perf runs (default sse/8/250: enough calls for a few hundred samples)
  BASE_PORT  ports BASE+1.. (default 28600); OUT (bench/results); TAG (one-call)
"""

import datetime
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# side_by_side reads SESSIONS as one number at import; this script's SESSIONS is a list.
_own = {k: os.environ.pop(k) for k in ("SESSIONS",) if k in os.environ}
import side_by_side as sbs  # noqa: E402  (the shared process and measuring helpers)
os.environ.update(_own)

ROOT = sbs.ROOT


def env(name, default):
    return os.environ.get(name, default)


ROUNDS = int(env("ROUNDS", 5))
SECS = int(env("SECS", 10))
PACED_SECS = int(env("PACED_SECS", SECS))
TOGETHER = env("TOGETHER", "1") == "1"
SLICES = max(1, int(env("SLICES", 1)))
THINK = [int(x) for x in env("THINK", "0 250").split()]
SESSIONS = [int(x) for x in env("SESSIONS", "1 8").split()]
ANSWERS = env("ANSWERS", "sse json").split()
TARGETS = env("TARGETS", "direct mcplb nginx haproxy").split()
MCPLB = env("MCPLB", os.path.join(sbs.BIN, "mcplb"))
MCPLB_B = env("MCPLB_B", "")
BUILDS = dict(b.split("=", 1) for b in env("BUILDS", f"b={MCPLB_B}" if MCPLB_B else "").split())
TARGETS += [f"mcplb-{n}" for n in BUILDS if f"mcplb-{n}" not in TARGETS]
STATS = env("STATS", "true")
IDLE_SECS = int(env("IDLE_SECS", 5))
STRACE = env("STRACE", "1") == "1"
STRACE_SECS = int(env("STRACE_SECS", 8))
PERF = env("PERF", "1") == "1"
PERF_SECS = int(env("PERF_SECS", 20))
URING = env("URING", "1") == "1"
URING_SECS = int(env("URING_SECS", 8))
URING_TRACE = env("URING_TRACE", "")
PERF_KEEP = env("PERF_KEEP", "")
PROFILE_CELL = env("PROFILE_CELL", "sse/1/250")
PERF_CELL = env("PERF_CELL", "sse/8/250")
BASE = int(env("BASE_PORT", 28600))
OUT = env("OUT", os.path.join(ROOT, "bench", "results"))
TAG = env("TAG", "one-call")
LOAD = os.path.join(sbs.BIN, "mcplb-load")
PROXIES = [t for t in TARGETS if t != "direct"]
NAMES = {"direct": "direct", "mcplb": "mcplb", "nginx": "nginx", "haproxy": "HAProxy"}
NAMES.update({f"mcplb-{n}": f"mcplb {n}" for n in BUILDS})
log = sbs.log

for t in TARGETS:
    if t not in NAMES:
        sys.exit(f"unknown target {t!r} (direct, mcplb, nginx, haproxy; mcplb-NAME with BUILDS)")
for a in ANSWERS:
    if a not in ("sse", "json"):
        sys.exit(f"ANSWERS: {a!r} is neither sse nor json")


# ---------------------------------------------------------------------------- processes

def mock_port(answers):
    return BASE + (1 if answers == "sse" else 2)


def proxy_port(kind, answers):
    order = ["mcplb", "nginx", "haproxy"] + [f"mcplb-{n}" for n in BUILDS]
    return BASE + 10 + 2 * order.index(kind) + (0 if answers == "sse" else 1)


def start_mock(answers):
    port = mock_port(answers)
    argv = ["taskset", "-c", "1", LOAD, "mock", "--listen", f"127.0.0.1:{port}", "--threads", "1"]
    if answers == "sse":
        argv.append("--sse")
    p = sbs.spawn(argv, f"mock-{answers}")
    sbs.wait_port(port, p)
    sbs.BACKEND_PIDS.append(p.pid)
    return sbs.Target("direct", port, [p], [p.pid])


def start_mcplb(kind, answers):
    port, backend = proxy_port(kind, answers), mock_port(answers)
    conf = os.path.join(sbs.RUNDIR, f"{kind}-{answers}.toml")
    # Health checks off: nginx and HAProxy check nothing either (their configs have no checks).
    with open(conf, "w") as f:
        f.write(f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nstats = {STATS}\n\n'
                f'[[servers]]\nname = "bench"\npath = "/mcp"\n'
                f'backends = ["http://127.0.0.1:{backend}/mcp"]\n[servers.health]\nenabled = false\n')
    binary = BUILDS[kind[len("mcplb-"):]] if kind != "mcplb" else MCPLB
    p = sbs.spawn(["taskset", "-c", "0", binary, "run", "--config", conf], f"{kind}-{answers}")
    sbs.wait_port(port, p)
    time.sleep(0.3)
    if p.poll() is not None:  # the port answered, but not this mcplb (another process holds it)
        raise RuntimeError(f"{kind} ({answers}) exited; see {sbs.RUNDIR}/{kind}-{answers}.log")
    return sbs.Target(kind, port, [p], [p.pid])


def start_target(kind, answers, mocks):
    if kind == "direct":
        return mocks[answers]
    if kind.startswith("mcplb"):
        return start_mcplb(kind, answers)
    return sbs.start_proxy(kind, proxy_port(kind, answers), mock_port(answers))


# ---------------------------------------------------------------------------- measuring

def tasks(pid):
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def proc_counters(pid):
    """(run time ns, wake-ups, {thread name: run time ns}) summed over the process's threads."""
    ns, wakes, by_name = 0, 0, {}
    for tid in tasks(pid):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/schedstat") as f:
                t = int(f.read().split()[0])
            with open(f"{base}/status") as f:
                st = f.read()
            with open(f"{base}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # a thread that ended meanwhile
        ns += t
        wakes += sum(int(x) for x in re.findall(r"(?:non)?voluntary_ctxt_switches:\s+(\d+)", st))
        by_name[name] = by_name.get(name, 0) + t
    return ns, wakes, by_name


def measured_pid(target):
    # nginx: the worker (the first PID is the worker, then the master); others: the process.
    return target.pids[0]


class Meter:
    """The proxy's run time and wake-ups, and each core's busy share, over a block."""

    def __init__(self, target):
        self.pid = measured_pid(target) if target.kind != "direct" else None

    def __enter__(self):
        self.t0, self.c0 = time.time(), sbs.core_times()
        self.p0 = proc_counters(self.pid) if self.pid else None
        return self

    def __exit__(self, *exc):
        self.wall = time.time() - self.t0
        c1 = sbs.core_times()
        self.busy = {}
        for c in (0, 1):
            if c in c1 and c in self.c0:
                db, dt = c1[c][0] - self.c0[c][0], c1[c][1] - self.c0[c][1]
                self.busy[c] = round(100.0 * db / dt, 1) if dt else None
        if self.pid:
            p1 = proc_counters(self.pid)
            self.cpu_ns, self.wakes = p1[0] - self.p0[0], p1[1] - self.p0[1]
            self.threads = {k: v - self.p0[2].get(k, 0) for k, v in p1[2].items()}
        else:
            self.cpu_ns = self.wakes = self.threads = None
        return False


def load_argv(url, sessions, think, secs, warmup="1s", watch=None):
    argv = ["taskset", "-c", "1", LOAD, "run", "--url", url, "--connections", str(sessions),
            "--duration", f"{secs:g}s", "--warmup", warmup, "--args",
            json.dumps(sbs.ARGS, separators=(",", ":")), "--json", "--quiet"]
    if think:
        argv += ["--rate", f"{sessions * 1000.0 / think:.6g}"]
    if watch:
        argv += ["--watch-pid", str(watch)]
    return argv


def load_json(stdout, stderr):
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mcplb-load failed: {stdout} {stderr}")


def run_load(url, sessions, think, secs, warmup="1s", watch=None):
    r = subprocess.run(load_argv(url, sessions, think, secs, warmup, watch), capture_output=True, text=True,
                       timeout=secs + 120)
    return load_json(r.stdout, r.stderr)


def one_run(target, sessions, think, secs=None, warmup="1s"):
    with Meter(target) as m:
        j = run_load(target.url, sessions, think, secs or SECS, warmup, watch_pid(target))
    return cell_of(target, j, m)


def watch_pid(target):
    """The process mcplb-load reads the measured window's CPU of (none for direct)."""
    return measured_pid(target) if target.kind != "direct" else None


def together_run(tgs, sessions, think, secs):
    """Every target of `tgs` loaded at once, each by its own mcplb-load, their starts spread
    evenly over the think time; each proxy's meter spans all the loads."""
    meters = [Meter(t) for t in tgs]
    for m in meters:
        m.__enter__()
    procs = []
    try:
        for i, t in enumerate(tgs):
            if i:
                time.sleep(think / 1000.0 / len(tgs))
            procs.append(subprocess.Popen(load_argv(t.url, sessions, think, secs, watch=watch_pid(t)),
                                          stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=secs + 120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for m in meters:
        m.__exit__(None, None, None)
    return [cell_of(t, load_json(*o), m) for t, o, m in zip(tgs, outs, meters)]


def merge_slices(cells):
    """One cell from a target's slices: CPU, wake-ups and exchanges summed, latency the median of
    the slices' figures."""
    c = dict(cells[0])
    for k in ("exchanges", "ok", "errors", "cpu_ns", "wakeups", "win_calls", "win_cpu_ns", "win_wakeups"):
        if all(x.get(k) is not None for x in cells):
            c[k] = sum(x[k] for x in cells)
    for k in ("p50_us", "p99_us", "calls_per_s", "core0_busy_pct", "core1_busy_pct", "proxy_cpu_pct"):
        c[k] = med([x.get(k) for x in cells])
    c["max_us"] = max(x["max_us"] for x in cells)
    c["wall_s"] = round(sum(x["wall_s"] for x in cells), 3)
    c["slices"] = len(cells)
    if c.get("cpu_ns") is not None and c["exchanges"]:
        c["cpu_us_per_call"] = round(c["cpu_ns"] / 1000.0 / c["exchanges"], 2)
        c["wakeups_per_call"] = round(c["wakeups"] / c["exchanges"], 3)
    if c.get("win_cpu_ns") is not None and c.get("win_calls"):
        c["win_cpu_us_per_call"] = round(c["win_cpu_ns"] / 1000.0 / c["win_calls"], 2)
        c["win_wakeups_per_call"] = round(c["win_wakeups"] / c["win_calls"], 3)
    return c


def cell_of(target, j, m):
    ex = j["exchanges"]
    lat = j["latency_us"]
    cell = {"kind": target.kind, "exchanges": ex, "ok": j["ok"], "errors": j["errors"]["total"],
            "calls_per_s": round(j["throughput_rps"], 1), "p50_us": lat["p50"], "p99_us": lat["p99"],
            "max_us": lat["max"], "send_lag_us": j.get("send_lag_us"), "wall_s": round(m.wall, 3),
            "core0_busy_pct": m.busy.get(0), "core1_busy_pct": m.busy.get(1)}
    if m.cpu_ns is not None and ex:
        cell.update({"cpu_ns": m.cpu_ns, "cpu_us_per_call": round(m.cpu_ns / 1000.0 / ex, 2),
                     "wakeups": m.wakes, "wakeups_per_call": round(m.wakes / ex, 3),
                     "proxy_cpu_pct": round(100.0 * m.cpu_ns / 1e9 / m.wall, 1),
                     "threads_cpu_ns": m.threads})
    w, calls = j.get("watched"), j["ok"] + j["errors"]["total"]
    if w and calls:
        # The measured window only (mcplb-load --watch-pid): the steady state's CPU per call.
        cell.update({"win_calls": calls, "win_cpu_ns": w["run_ns"], "win_wakeups": w["switches"],
                     "win_cpu_us_per_call": round(w["run_ns"] / 1000.0 / calls, 2),
                     "win_wakeups_per_call": round(w["switches"] / calls, 3)})
    return cell


# ---------------------------------------------------------------------------- phases

RESULTS = {"cells": {}, "idle": {}, "strace": {}, "perf": {}, "uring": {}}


def cell_key(answers, sessions, think):
    return f"{answers}/{sessions}/{think}"


def cell_runs(targets, kinds, a, s, t):
    """One round of a cell: {kind: cell} for every target, by the mode the cell's kind asks."""
    if t and TOGETHER:
        return dict(zip(kinds, together_run([targets[(k, a)] for k in kinds], s, t, PACED_SECS)))
    if t or SLICES == 1:
        return {k: one_run(targets[(k, a)], s, t, PACED_SECS if t else SECS) for k in kinds}
    slices = {k: [] for k in kinds}
    for i in range(SLICES):
        for k in (kinds if i % 2 == 0 else kinds[::-1]):
            slices[k].append(one_run(targets[(k, a)], s, t, SECS / SLICES, "0.3s"))
    return {k: merge_slices(v) for k, v in slices.items()}


def phase_cells(targets):
    cells = [(a, s, t) for t in THINK for a in ANSWERS for s in SESSIONS]
    for rnd in range(ROUNDS):
        for (a, s, t) in cells:
            key = cell_key(a, s, t)
            kinds = list(TARGETS)
            # A different order every round, so that no target always runs first or last.
            random.Random(rnd * 7919 + sum(key.encode())).shuffle(kinds)
            for kind, c in cell_runs(targets, kinds, a, s, t).items():
                c["round"] = rnd
                RESULTS["cells"].setdefault(key, {}).setdefault(kind, []).append(c)
                cpu = f"{c['cpu_us_per_call']:7.1f} µs/call, {c['wakeups_per_call']:5.2f} wake-ups" \
                    if "cpu_us_per_call" in c else " " * 30
                log(f"round {rnd + 1} {key:12s} {kind:8s} {cpu}  p50 {c['p50_us']} p99 {c['p99_us']} µs, "
                    f"{c['calls_per_s']:.0f} calls/s, errors {c['errors']}")


def phase_idle(targets):
    """Each proxy's CPU with nothing to do (connections from earlier runs closed)."""
    if IDLE_SECS <= 0:
        return
    time.sleep(1)
    for rnd in range(min(ROUNDS, 3)):
        for (kind, a), t in targets.items():
            if kind == "direct" or a != ANSWERS[0]:
                continue
            with Meter(t) as m:
                time.sleep(IDLE_SECS)
            RESULTS["idle"].setdefault(kind, []).append(
                {"us_per_s": round(m.cpu_ns / 1000.0 / m.wall, 1), "wakeups_per_s": round(m.wakes / m.wall, 1),
                 "threads_cpu_ns": m.threads})
            log(f"idle {kind:8s} {m.cpu_ns / 1000.0 / m.wall:7.1f} µs/s, {m.wakes / m.wall:.1f} wake-ups/s")


def profile_cell(cell=None):
    a, s, t = (cell or PROFILE_CELL).split("/")
    return a, int(s), int(t)


def phase_strace(targets):
    a, s, t = profile_cell()
    for kind in PROXIES:
        tg = targets[(kind, a)]
        out = os.path.join(sbs.RUNDIR, f"strace-{kind}.txt")
        st = sbs.spawn(["strace", "-c", "-f", "-o", out, "-p", str(measured_pid(tg))], f"strace-{kind}")
        time.sleep(1.0)
        j = subprocess.run(load_argv(tg.url, s, t, STRACE_SECS), capture_output=True, text=True,
                           timeout=STRACE_SECS + 120)
        ex = json.loads(j.stdout.strip().splitlines()[-1])["exchanges"]
        os.kill(st.pid, signal.SIGINT)
        try:
            st.wait(15)
        except subprocess.TimeoutExpired:
            pass
        sbs.stop(st)
        calls, top = sbs.parse_strace(out)
        per = round(calls / ex, 2) if calls and ex else None
        with open(out) as f:
            text = f.read()
        RESULTS["strace"][kind] = {"cell": PROFILE_CELL, "exchanges": ex, "syscalls": calls, "per_call": per,
                                   "top": [(n, c, round(c / ex, 2)) for n, c in top], "strace": text}
        log(f"strace {kind:8s} {calls} syscalls / {ex} requests = {per}; top {top[:4]}")


# What the kernel does for mcplb's rings: operations submitted (by opcode), completions,
# task work queued (completions that waited for readiness) and run, and enters that waited.
# (Not io_uring_task_add: it fires in whichever process's context made a socket ready, so
# `-p` counts the backend's and the client's rings there and misses mcplb's own.) Events are
# kept only for the rings mcplb submitted to.
URING_EVENTS = ["io_uring_submit_req", "io_uring_complete", "io_uring_poll_arm", "io_uring_cqring_wait",
                "io_uring_local_work_run", "io_uring_task_work_run"]


def phase_uring(targets):
    a, s, t = profile_cell()
    for kind in [k for k in PROXIES if k.startswith("mcplb")]:
        tg = targets[(kind, a)]
        data = os.path.join(sbs.RUNDIR, f"uring-{kind}.data")
        argv = ["perf", "record", "-q", "-o", data, "-p", str(measured_pid(tg))]
        for e in URING_EVENTS:
            argv += ["-e", f"io_uring:{e}"]
        rec = sbs.spawn(argv + ["--", "sleep", str(URING_SECS + 2)], f"uring-{kind}")
        time.sleep(0.5)
        j = run_load(tg.url, s, t, URING_SECS)
        rec.wait(URING_SECS + 30)
        sbs.stop(rec)
        script = subprocess.run(["perf", "script", "-i", data, "-F", "event,trace"], capture_output=True,
                                text=True).stdout
        if URING_TRACE:
            # The events in order, with thread and time: to read one call's operations.
            timeline = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,event,trace"],
                                      capture_output=True, text=True).stdout
            with open(f"{URING_TRACE}-{kind}.txt", "w") as f:
                f.write(timeline)
        os.remove(data)
        counts = {}
        events = [(m.group(1), m.group(2)) for m in
                  (re.match(r"\s*io_uring:(\w+):?\s*(.*)", line) for line in script.splitlines()) if m]
        ring = re.compile(r"ring (0x[0-9a-f]+)")
        own = {r.group(1) for ev, rest in events if ev == "io_uring_submit_req" for r in [ring.search(rest)] if r}
        for ev, rest in events:
            r = ring.search(rest)
            if r and r.group(1) not in own:
                continue
            if ev == "io_uring_submit_req":
                op = re.search(r"opcode (\w+)", rest)
                ev = f"submit {op.group(1) if op else '?'}"
            counts[ev] = counts.get(ev, 0) + 1
        ex = j["exchanges"]
        RESULTS["uring"][kind] = {"cell": PROFILE_CELL, "exchanges": ex, "counts": counts,
                                  "per_call": {k: round(v / ex, 2) for k, v in sorted(counts.items())} if ex else {}}
        log(f"uring {kind}: {RESULTS['uring'][kind]['per_call']} per request over {ex}")


def kernel_share(data):
    """The share of a profile's samples taken in the kernel (perf's [k] symbols)."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso", "-g", "none"],
                         capture_output=True, text=True).stdout
    k = sum(float(m.group(1)) for m in re.finditer(r"^\s*([\d.]+)%\s+\[kernel", out, re.M))
    return round(k, 1)


def phase_perf(targets):
    a, s, t = profile_cell(PERF_CELL)
    for kind in [k for k in PROXIES if k.startswith("mcplb") or k == "nginx"]:
        tg = targets[(kind, a)]
        data = os.path.join(sbs.RUNDIR, f"perf-{kind}.data")
        rec = sbs.spawn(["perf", "record", "-e", "cpu-clock", "-F", "10000", "-g", "-o", data,
                         "-p", str(measured_pid(tg)), "--", "sleep", str(PERF_SECS + 2)], f"perf-{kind}")
        time.sleep(0.5)
        j = run_load(tg.url, s, t, PERF_SECS)
        rec.wait(PERF_SECS + 30)
        sbs.stop(rec)
        flat = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                               "--percent-limit", "0.7", "-g", "none"], capture_output=True, text=True).stdout
        tree = subprocess.run(["perf", "report", "-i", data, "--stdio", "--children", "--sort", "symbol",
                               "--percent-limit", "4", "-g", "caller,0.5,callee,function,percent", "--max-stack", "14"],
                              capture_output=True, text=True).stdout
        samples = re.search(r"# Samples: (\S+)\s+of event", flat)
        RESULTS["perf"][kind] = {"cell": PERF_CELL, "exchanges": j["exchanges"],
                                 "samples": samples.group(1) if samples else None, "kernel_pct": kernel_share(data),
                                 "flat": strip_perf(flat), "tree": strip_perf(tree)[:20000]}
        if PERF_KEEP:
            os.replace(data, os.path.join(PERF_KEEP, f"perf-{kind}.data"))
        else:
            os.remove(data)
        log(f"perf {kind}: {RESULTS['perf'][kind]['samples']} samples over {j['exchanges']} requests")


def strip_perf(text):
    return "\n".join(line for line in text.splitlines() if line.strip() and not line.startswith("#"))


# ---------------------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, fmt="{:.1f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} [{fmt.format(min(xs))}–{fmt.format(max(xs))}]"


def fmt0(x):
    return "–" if x is None else f"{x:.0f}"


def paired_ratios(runs, kind, peer, field="cpu_us_per_call"):
    """Per-round ratios kind/peer of `field` (the runs of one round ran back to back)."""
    by_round = {}
    for k in (kind, peer):
        for c in runs.get(k, []):
            by_round.setdefault(c["round"], {})[k] = c.get(field)
    return [r[kind] / r[peer] for r in by_round.values() if r.get(kind) and r.get(peer)]


def cpu_table(R, proxies, names, field, total, count):
    """The steady state's CPU table (the same shape as the whole run's)."""
    nx = "nginx" in proxies
    others = [k for k in proxies if k != "nginx" and nx]
    lines = ["## Proxy CPU µs per call, measured window only", "",
             "| cell | " + " | ".join(names[k] for k in proxies) + " | "
             + " | ".join(f"{names[k]} ÷ nginx" for k in others) + " |",
             "|---|" + "---|" * (len(proxies) + len(others))]
    for key, runs in R["cells"].items():
        row = [describe(key)] + [spread([c.get(field) for c in runs.get(k, [])]) for k in proxies]
        row += [spread(paired_ratios(runs, k, "nginx", field), "{:.2f}")
                + pooled_ratio(runs, k, "nginx", total, count) for k in others]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def pooled_ratio(runs, kind, peer, total="cpu_ns", count="exchanges"):
    """'; all X': kind's CPU per request over all its rounds ÷ peer's."""
    def per(k):
        cs = [c for c in runs.get(k, []) if c.get(total) is not None]
        ex = sum(c[count] for c in cs)
        return sum(c[total] for c in cs) / ex if ex else None
    a, b = per(kind), per(peer)
    return f"; all {a / b:.2f}" if a and b else ""


def describe(key):
    a, s, t = key.split("/")
    wait = "back to back" if t == "0" else f"one call every {t} ms"
    return f"{a.upper()} answers, {s} session{'s' if s != '1' else ''}, {wait}"


def report(d):
    R, f = d["results"], d["facts"]
    proxies = [k for k in d["targets"] if k != "direct"]
    builds = d["settings"].get("BUILDS") or ({"b": d["settings"]["MCPLB_B"]} if d["settings"].get("MCPLB_B") else {})
    names = dict(NAMES, **{f"mcplb-{n}": f"mcplb {n}" for n in builds})
    st = d["settings"]
    lines = [f"# One call at a time: proxy CPU per call ({d['started'][:10]})", "",
             "Agents call tools one after another: one call in flight per session, the connection idle "
             "between calls. `bench/one_call.sh` (issue 21) measures that regime for mcplb beside nginx, "
             "HAProxy and no proxy (direct), in the same run.", "",
             "## Method", "",
             "- Layout: each proxy one worker/thread pinned to core 0 (mcplb `workers = 1`, health checks off as "
             "nginx and HAProxy check nothing; nginx `worker_processes 1`, upstream keepalive, logs off, "
             "`proxy_buffering off`; HAProxy `nbthread 1`, `http-reuse always`, no logs: the configs of "
             "`bench/conf/`); the mock backend and mcplb-load on core 1; loopback.",
             "- Backend: the bundled mock (`mcplb-load mock --threads 1`), stateful; with `--sse` it answers "
             "each `tools/call` as an SSE stream written as the Python SDK's server writes one (head, event, "
             "end of stream: three writes); without it, a JSON body (about 200 bytes either way).",
             "- Client: `mcplb-load run --connections N`, one MCP session per connection (initialize, "
             "notifications/initialized, then `tools/call` of `echo`), each session one call in flight. "
             "*Back to back*: the next call leaves when the answer is read. *One call every T ms*: each "
             "session's calls are scheduled T ms apart (`--rate`), so the connection idles in between "
             "(past mcplb's 100 ms hot wait it is parked in the per-core epoll set).",
             f"- Per run: {d['settings']['SECS']} s measured after 1 s of warm-up"
             + (f" (paced cells {st.get('PACED_SECS')} s)" if st.get("PACED_SECS", st["SECS"]) != st["SECS"] else "")
             + (f"; a back-to-back run is {st['SLICES']} slices of {st['SECS'] / st['SLICES']:g} s (0.3 s of "
                "warm-up each), the targets alternating slice by slice (A B B A ...), its figures summed over "
                "its slices" if st.get("SLICES", 1) > 1 else "")
             + (". The paced cells' targets ran **at the same time**, each loaded by its own mcplb-load, "
                "their starts spread evenly over the think time: their calls alternate on core 0, each "
                "proxy idle between its calls, so the two runs of a round see the same machine over the same "
                "window" if st.get("TOGETHER") else "")
             + ". CPU = the proxy process's "
             "run time (sum over its threads of `/proc/PID/task/*/schedstat`, ns; nginx: its worker) over the "
             "whole load run ÷ the requests written in it (set-up, warm-up and calls). Wake-ups = voluntary + "
             "involuntary context switches of its threads, per request. Latency: the measured calls, from "
             "their scheduled send time; added = minus direct's median of the same cell.",
             f"- {d['settings']['ROUNDS']} rounds; in each, every cell runs once per target, targets in a "
             "shuffled order. Figures: median [min–max] over rounds; ratios are medians of the per-round "
             "ratios (runs of one round ran minutes apart at most).",
             f"- Machine: {f['nproc']} cores, {f['cpu']}, kernel {f['kernel']}; {f['nginx']}; {f['haproxy']}; "
             f"mcplb: `{d['settings']['MCPLB']}` (run from a checkout at {f['mcplb_commit']}"
             f"{', uncommitted changes' if f['mcplb_dirty'] else ''})"
             + "".join(f"; mcplb {n}: `{b}`" for n, b in builds.items())
             + f". Load average at start {' '.join(d['load_start'])}, at the end {' '.join(d['load_end'])}.",
             f"- Command: `{d['command']}`", ""]
    lines += ["## Proxy CPU µs per request", "",
              "| cell | " + " | ".join(names[k] for k in proxies) + " | "
              + " | ".join(f"{names[k]} ÷ nginx" for k in proxies if k != "nginx" and "nginx" in proxies) + " |",
              "|---|" + "---|" * (len(proxies) + len([k for k in proxies if k != "nginx" and "nginx" in proxies]))]
    for key, runs in R["cells"].items():
        row = [describe(key)] + [spread([c.get("cpu_us_per_call") for c in runs.get(k, [])]) for k in proxies]
        if "nginx" in proxies:
            row += [spread(paired_ratios(runs, k, "nginx"), "{:.2f}") + pooled_ratio(runs, k, "nginx")
                    for k in proxies if k != "nginx"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Ratios: median [min–max] of the per-round ratios; *all* = the ratio of the totals "
              "(each target's CPU over all its rounds ÷ its requests over all its rounds).", ""]
    if any(c.get("win_cpu_us_per_call") is not None for runs in R["cells"].values() for cs in runs.values()
           for c in cs):
        lines += cpu_table(R, proxies, names, "win_cpu_us_per_call", "win_cpu_ns", "win_calls")
        lines += ["", "The measured window only: the proxy's run time from the start of the measured window "
                  "until the last answer was read, as mcplb-load read it (`--watch-pid`: every thread's "
                  "`schedstat`), over the calls of that window. No session set-up, warm-up, upstream "
                  "connect or closing: the steady state's CPU per call.", ""]
    if builds and "mcplb" in proxies:
        others = [f"mcplb-{n}" for n in builds if f"mcplb-{n}" in proxies]
        lines += ["", "## A/B: mcplb builds in the same run", "",
                  f"`mcplb` is `{d['settings']['MCPLB']}`. Per-round ratios of CPU per request (the runs of "
                  "one round ran within minutes), median [min–max]; below 1 = the build costs less than mcplb.", "",
                  "| cell | " + " | ".join(f"{names[k]} ÷ mcplb" for k in others)
                  + " | " + " | ".join(f"{names[k]} ÷ mcplb, window" for k in others) + " |",
                  "|---|" + "---|" * 2 * len(others)]
        for key, runs in R["cells"].items():
            lines.append("| " + " | ".join([describe(key)] + [spread(paired_ratios(runs, k, "mcplb"), "{:.2f}")
                                                               for k in others]
                                           + [spread(paired_ratios(runs, k, "mcplb", "win_cpu_us_per_call"),
                                                     "{:.2f}") for k in others]) + " |")
    lines += ["", "## Wake-ups per request (context switches of the proxy's threads; whole run | window)", "",
              "| cell | " + " | ".join(names[k] for k in proxies) + " | "
              + " | ".join(f"{names[k]}, window" for k in proxies) + " |", "|---|" + "---|" * 2 * len(proxies)]
    for key, runs in R["cells"].items():
        lines.append("| " + " | ".join([describe(key)] + [spread([c.get(f) for c in runs.get(k, [])], "{:.2f}")
                                                           for f in ("wakeups_per_call", "win_wakeups_per_call")
                                                           for k in proxies]) + " |")
    lines += ["", "## Latency: p50 / p99 µs, and added over direct", "",
              "| cell | " + " | ".join(names[k] for k in d["targets"]) + " | "
              + " | ".join(f"{names[k]} added" for k in proxies) + " |",
              "|---|" + "---|" * (len(d["targets"]) + len(proxies))]
    for key, runs in R["cells"].items():
        p50 = {k: med([c["p50_us"] for c in runs.get(k, [])]) for k in d["targets"]}
        p99 = {k: med([c["p99_us"] for c in runs.get(k, [])]) for k in d["targets"]}
        row = [describe(key)] + [f"{p50[k]:.0f} / {p99[k]:.0f}" if p50[k] is not None else "–" for k in d["targets"]]
        if "direct" in d["targets"]:
            row += [f"+{p50[k] - p50['direct']:.0f} / +{p99[k] - p99['direct']:.0f}"
                    if p50[k] is not None and p50["direct"] is not None else "–" for k in proxies]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Load and bottleneck", "",
              "| cell | calls/s (each target) | proxy's share of core 0 | core 0 busy | core 1 busy | errors |",
              "|---|---|---|---|---|---|"]
    for key, runs in R["cells"].items():
        allc = [c for k in d["targets"] for c in runs.get(k, [])]
        lines.append("| " + " | ".join([
            describe(key),
            ", ".join(f"{names[k]} {fmt0(med([c['calls_per_s'] for c in runs.get(k, [])]))}" for k in d["targets"]),
            ", ".join(f"{names[k]} {fmt0(med([c.get('proxy_cpu_pct') for c in runs.get(k, [])]))} %" for k in proxies),
            spread([c["core0_busy_pct"] for c in allc], "{:.0f}") + " %",
            spread([c["core1_busy_pct"] for c in allc], "{:.0f}") + " %",
            str(sum(c["errors"] for c in allc))]) + " |")
    lines += ["", "With one call in flight per session the load itself saturates no core: each call waits for "
              "the round trip through client, proxy and backend, so calls/s follow latency and CPU per request "
              "is the figure that compares the proxies. The busy shares count every process on the core: above "
              "the proxy's own share they are other work on a shared machine. Then latency (timed from each "
              "call's scheduled send, so it includes the load generator's own lag on a busy core 1) is noise, "
              "and CPU per request, a sum of the proxy's own run time, the figure to read.", ""]
    if R.get("idle"):
        lines += ["## Idle", "", "CPU with no request at all (connections from earlier runs closed), per second:", "",
                  "| proxy | µs per s | wake-ups per s |", "|---|---|---|"]
        for k, xs in R["idle"].items():
            lines.append(f"| {names[k]} | {spread([x['us_per_s'] for x in xs])} | "
                         f"{spread([x['wakeups_per_s'] for x in xs])} |")
        lines.append("")
    if R.get("strace"):
        lines += [f"## Syscalls per request (`strace -c -f`, counts only, cell {describe(PROFILE_CELL_OF(d))})", "",
                  "| proxy | syscalls per request | top (per request) |", "|---|---|---|"]
        for k, s in R["strace"].items():
            top = ", ".join(f"{n} {p}" for n, _, p in s["top"])
            lines.append(f"| {names[k]} | {s['per_call']} | {top} |")
        lines.append("")
    if R.get("uring"):
        cell = next(iter(R["uring"].values()))["cell"]
        kinds = list(R["uring"])
        evs = sorted({e for u in R["uring"].values() for e in u["per_call"]})
        lines += [f"## io_uring per request (tracepoints counted with `perf record`, cell {describe(cell)})", "",
                  "`submit OP`: operations submitted, by opcode; `io_uring_complete`: completions posted; "
                  "`io_uring_poll_arm`: operations that found their socket not ready and armed a poll; "
                  "`io_uring_task_work_run`/`io_uring_local_work_run`: runs of completion work for sockets "
                  "that turned ready; "
                  "`io_uring_cqring_wait`: enters that slept for a completion.", "",
                  "| event | " + " | ".join(names[k] for k in kinds) + " |", "|---|" + "---|" * len(kinds)]
        for e in evs:
            lines.append(f"| {e} | " + " | ".join(str(R["uring"][k]["per_call"].get(e, 0)) for k in kinds) + " |")
        lines.append("")
    if R.get("perf"):
        cell = next(iter(R["perf"].values()))["cell"]
        lines += [f"## Profiles (`perf record -e cpu-clock -F 10000 -g`, cell {describe(cell)})", ""]
        for k, p in R["perf"].items():
            split = f", {p['kernel_pct']} % of them in the kernel" if p.get("kernel_pct") is not None else ""
            lines += [f"### {names[k]}: {p['samples']} samples over {p['exchanges']} requests{split}", "", "```",
                      "\n".join(p["flat"].splitlines()[:45]), "```", ""]
    return "\n".join(lines) + "\n"


def PROFILE_CELL_OF(d):  # noqa: N802 - reads like the setting it reports
    return d["settings"].get("PROFILE_CELL", PROFILE_CELL)


def rerender(path):
    with open(path) as f:
        d = json.load(f)
    md = path[: -len(".json")] + ".md"
    with open(md, "w") as f:
        f.write(report(d))
    print(f"wrote {md}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return rerender(sys.argv[2])
    ports = [mock_port(a) for a in ANSWERS] + [proxy_port(k, a) for k in PROXIES for a in ANSWERS]
    started, stem = sbs.begin_run(OUT, TAG, ports, BASE)
    facts = sbs.machine_facts()
    load_start = sbs.loadavg()
    log(f"work dir {sbs.RUNDIR}; results -> {stem}.md")
    try:
        mocks = {a: start_mock(a) for a in ANSWERS}
        targets = {(k, a): start_target(k, a, mocks) for k in TARGETS for a in ANSWERS}
        time.sleep(0.5)
        for (k, a), t in targets.items():  # every path answers, and is warm
            j = run_load(t.url, 1, 0, 1)
            if j["ok"] == 0 or j["errors"]["total"]:
                raise RuntimeError(f"{k} ({a}) did not answer the benchmark call: {j['errors']}")
        phase_cells(targets)
        phase_idle(targets)
        if STRACE:
            phase_strace(targets)
        if URING:
            phase_uring(targets)
        if PERF:
            phase_perf(targets)
    finally:
        sbs.stop_all()
    finished = datetime.datetime.now()
    d = {"facts": facts, "command": env("ONE_CALL_COMMAND", "bench/one_call.sh"), "started": started.isoformat(),
         "finished": finished.isoformat(), "load_start": load_start, "load_end": sbs.loadavg(), "targets": TARGETS,
         "settings": {"ROUNDS": ROUNDS, "SECS": SECS, "PACED_SECS": PACED_SECS, "TOGETHER": TOGETHER,
                      "SLICES": SLICES, "THINK": THINK, "SESSIONS": SESSIONS, "ANSWERS": ANSWERS,
                      "STATS": STATS, "MCPLB": MCPLB, "BUILDS": BUILDS, "PROFILE_CELL": PROFILE_CELL,
                      "PERF_CELL": PERF_CELL},
         "results": RESULTS}
    with open(stem + ".json", "w") as f:
        json.dump(d, f, indent=1)
    text = report(d)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    log(f"wrote {stem}.md and .json in {(finished - started).total_seconds() / 60:.1f} min")


if __name__ == "__main__":
    main()
