#!/usr/bin/env python3
"""Side-by-side benchmark of mcplb, nginx, HAProxy and no proxy (direct), per BENCHMARKING.md.

Started by bench/side_by_side.sh (which installs the tools, builds the binaries and waits for a
quiet machine). Python 3 standard library only. Every process it starts is stopped by PID at exit.

Layout (2 cores): the proxy under test runs on core 0 (one worker / thread / process), the
backend (mock MCP server) and the load generator (wrk or mcplb-load) on core 1, loopback only.

Settings (environment):
  DURATION      seconds per closed-loop throughput cell (default 10)
  LAT_DURATION  seconds per open-loop latency cell (default: DURATION)
  RUNS          runs per cell (default 3)
  CONNS         closed-loop connection counts (default "64 256")
  LAT_CONNS     connections used by the open-loop runs (default 256)
  FIXED_RATE    the fixed open-loop rate besides the 25/50/75 % ones (default 10000)
  TAIL_CONNS    connections of the tail phase's open-loop cell (default 1000)
  TAIL_RATE     its rate (default 10000)
  TAIL_DURATION seconds per tail cell (default: LAT_DURATION)
  STRACE_SECS   seconds of each strace run (default 3)
  IDLE_CONNS    idle connections for the memory figure (default 10000)
  IDLE_WAIT     seconds to let idle connections settle before reading RSS (default 2)
  IDLE_WARM     idle connections opened (and kept open) before the memory phase's baseline, so
                start-up and first-connection allocations are behind it (default 1000)
  IDLE_STEPS    steps the IDLE_CONNS connections are opened in, RSS read after each (default 10)
  MEM_TARGETS   the memory phase's targets (default "mcplb mcplb-epoll mcplb-lazy nginx haproxy":
                mcplb on io_uring, mcplb on its epoll driver, mcplb on io_uring with mimalloc's
                default purge delay; "mcplb-b" and "mcplb-b-epoll": the MCPLB_B build, the same
                run's before/after)
  MEM_PURGE_DELAY  MIMALLOC_PURGE_DELAY for mcplb in the memory phase (default 0: memory freed is
                returned at once, not at an allocation at least 1 s later; "mcplb-lazy" keeps
                mimalloc's default)
  SESSIONS      concurrent MCP sessions for the sessions figure (default 1000)
  SESSION_RATE  open-loop rate of the sessions figure (default 10000)
  XCHECK        1 = also run the nginx "return 200" backend cross-check (default 1)
  PHASES        phases to run (default "throughput latency tail syscalls https agreement memory sessions xcheck")
  BASE_PORT     ports used: BASE+1..3 backends, BASE+80.. proxies (default 27000)
  MCPLB         the mcplb binary under test (default target/release/mcplb)
  MCPLB_B       a second mcplb binary: a same-run A/B in the tail phase ("mcplb B" beside
                "mcplb", the builds' order rotated every run, B/A ratios per run)
  MCPLB_C       a third one, likewise ("mcplb C", C/A ratios)
  TAIL_TARGETS  the tail phase's targets (default "direct mcplb mcplb-b mcplb-c nginx haproxy",
                mcplb-b and mcplb-c only when set)
  TAIL_SPIN     cores (e.g. "0 1") kept from going idle during the tail phase by a busy loop at
                SCHED_IDLE priority (it runs only when nothing else wants the core, and any
                waking task preempts it): whether the tail is an idle core's (vCPU's) wake-up
  LOAD_BIN      the mcplb-load binary (mock and load generator; default target/release/mcplb-load)
  OUT           results directory (default bench/results)
  RESULT_NAME   results file name after the date (default side-by-side)
"""

import json
import os
import re
import resource
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
# The mcplb builds under test (MCPLB_B, MCPLB_C: more, measured beside the first in the tail phase).
MCPLB_BIN = {"mcplb": os.environ.get("MCPLB") or None, "mcplb-b": os.environ.get("MCPLB_B") or None,
             "mcplb-c": os.environ.get("MCPLB_C") or None}
BUILDS = ["mcplb", "mcplb-b", "mcplb-c"]
LOAD_BIN_ENV = os.environ.get("LOAD_BIN") or None
CONF = os.path.join(ROOT, "bench", "conf")


def env_int(name, default):
    return int(os.environ.get(name, default))


DURATION = env_int("DURATION", 10)
LAT_DURATION = env_int("LAT_DURATION", DURATION)
RUNS = env_int("RUNS", 3)
CONNS = [int(c) for c in os.environ.get("CONNS", "64 256").split()]
LAT_CONNS = env_int("LAT_CONNS", 256)
FIXED_RATE = env_int("FIXED_RATE", 10000)
TAIL_CONNS = env_int("TAIL_CONNS", 1000)
TAIL_RATE = env_int("TAIL_RATE", 10000)
TAIL_DURATION = env_int("TAIL_DURATION", LAT_DURATION)
STRACE_SECS = env_int("STRACE_SECS", 3)
IDLE_CONNS = env_int("IDLE_CONNS", 10000)
IDLE_WAIT = float(os.environ.get("IDLE_WAIT", "2"))
IDLE_WARM = env_int("IDLE_WARM", 1000)
IDLE_STEPS = env_int("IDLE_STEPS", 5)
MEM_TARGETS = os.environ.get("MEM_TARGETS", "mcplb mcplb-epoll mcplb-lazy nginx haproxy").split()
MEM_PURGE_DELAY = os.environ.get("MEM_PURGE_DELAY", "0")
SESSIONS = env_int("SESSIONS", 1000)
SESSION_RATE = env_int("SESSION_RATE", 10000)
XCHECK = os.environ.get("XCHECK", "1") == "1"
PHASES = os.environ.get("PHASES", "throughput latency tail syscalls https agreement memory sessions xcheck").split()
BASE = env_int("BASE_PORT", 27000)
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench", "results"))
RESULT_NAME = os.environ.get("RESULT_NAME", "side-by-side")

P_MOCK, P_MOCK_SESS, P_NGX_BACKEND = BASE + 1, BASE + 2, BASE + 3
PROXY_PORTS = {"mcplb": BASE + 80, "nginx": BASE + 81, "haproxy": BASE + 82}
# The admin port of the main mcplb under test (its loop gaps, read by the tail phase).
P_MCPLB_ADMIN = BASE + 79
# The other mcplb builds (MCPLB_B, MCPLB_C) of the tail phase's A/B: their ports and admin ports.
EXTRA_PORTS = {"mcplb-b": (BASE + 83, BASE + 78), "mcplb-c": (BASE + 84, BASE + 77)}
ADMIN_PORTS = {"mcplb": P_MCPLB_ADMIN, **{k: v[1] for k, v in EXTRA_PORTS.items()}}
HTTPS_PORTS = {"mcplb": BASE + 70, "nginx": BASE + 71, "haproxy": BASE + 72}
PROXIES = ["mcplb", "nginx", "haproxy"]
TARGETS = ["direct"] + PROXIES
TAIL_SPIN = os.environ.get("TAIL_SPIN", "").split()
NAMES = {"direct": "direct", "mcplb": "mcplb", "nginx": "nginx", "haproxy": "HAProxy", "mcplb-b": "mcplb B",
         "mcplb-c": "mcplb C", "mcplb-epoll": "mcplb, epoll driver",
         "mcplb-lazy": "mcplb, mimalloc's default purge delay", "mcplb-b-epoll": "mcplb B, epoll driver"}
TAIL_TARGETS = [t for t in os.environ.get("TAIL_TARGETS", "direct mcplb mcplb-b mcplb-c nginx haproxy").split()
                if t not in EXTRA_PORTS or MCPLB_BIN[t]]

TOOL = "echo"
ARGS = {"query": "what is the weather in Paris today", "limit": 10}
# The body mcplb-load sends in --stateless mode (same fields; wrk sends it verbatim).
WRK_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": ARGS,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    },
    separators=(",", ":"),
)
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": TOOL,
}

RUNDIR = tempfile.mkdtemp(prefix="mcplb-bench.")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- processes

STARTED = []  # Popen objects, stopped at exit by PID


def spawn(argv, name, **kw):
    out = open(os.path.join(RUNDIR, f"{name}.log"), "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    p._bench_name = name
    STARTED.append(p)
    return p


def stop(p, timeout=5.0):
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(reversed(STARTED)):
        extra = getattr(p, "_bench_children", [])
        stop(p)
        for pid in extra:  # nginx workers, in case the master was killed hard
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def wait_port(port, proc, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc._bench_name} exited early; see {RUNDIR}/{proc._bench_name}.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {timeout}s ({proc._bench_name})")


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def begin_run(out, name, ports, base):
    """The start of an orchestrator's run: SIGTERM/SIGINT stop what it started (by PID), the
    results' stem is OUT/<date>-NAME, and every port it will listen on must be free (exits
    naming the first taken). Returns (start time, stem)."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = datetime.datetime.now()
    os.makedirs(out, exist_ok=True)
    for port in ports:
        if not port_free(port):
            sys.exit(f"port {port} is in use; set BASE_PORT to another base (now {base})")
    return started, os.path.join(out, f"{started:%Y-%m-%d}-{name}")


def render(template, dest, **kv):
    with open(os.path.join(CONF, template)) as f:
        text = string.Template(f.read()).substitute(RUNDIR=RUNDIR, **{k: str(v) for k, v in kv.items()})
    path = os.path.join(RUNDIR, dest)
    with open(path, "w") as f:
        f.write(text)
    return path


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Target:
    """A running system under test (or the direct backend): its port and measured PIDs."""

    def __init__(self, kind, port, procs, pids, info="", scheme="http"):
        self.kind, self.port, self.procs, self.pids, self.info = kind, port, procs, pids, info
        self.scheme = scheme

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}/mcp"

    def stop(self):
        for p in self.procs:
            stop(p)


def load_bin():
    return LOAD_BIN_ENV or f"{BIN}/mcplb-load"


def mcplb_bin(kind="mcplb"):
    """The binary of an mcplb under test: `mcplb` (MCPLB, else the release build), `mcplb-b`, `mcplb-c`."""
    return MCPLB_BIN[kind] or f"{BIN}/mcplb"


def start_mock(port, stateless=True):
    argv = ["taskset", "-c", "1", load_bin(), "mock", "--listen", f"127.0.0.1:{port}", "--threads", "1"]
    if stateless:
        argv.append("--stateless")
    p = spawn(argv, f"mock-{port}")
    wait_port(port, p)
    BACKEND_PIDS.append(p.pid)
    return Target("direct", port, [p], [p.pid])


def start_nginx_backend(port):
    conf = render("nginx-backend.conf.tmpl", f"nginx-backend-{port}.conf", LISTEN=port)
    p = spawn(["taskset", "-c", "1", "nginx", "-p", RUNDIR, "-e", f"{RUNDIR}/nginx-backend-{port}-startup.log", "-c", conf],
              f"nginx-backend-{port}")
    wait_port(port, p)
    p._bench_children = children(p.pid)
    BACKEND_PIDS.extend([p.pid] + p._bench_children)
    return Target("direct", port, [p], [p.pid] + p._bench_children)


def start_proxy(kind, port, backend, tls=None, admin=None):
    """Starts a proxy under test; with `tls` = (cert, key, combined pem) it terminates TLS; with
    `admin` (a port) an mcplb also listens for its admin port there. `mcplb-b`, `mcplb-c`:
    the other mcplb builds (MCPLB_B, MCPLB_C), same config."""
    if kind in EXTRA_PORTS:
        t = start_proxy_plain("mcplb", port, backend, tls, admin, binary=mcplb_bin(kind))
        t.kind = kind
        return t
    t = start_proxy_plain(kind, port, backend, tls, admin)
    if tls:
        t.scheme = "https"
    return t


def start_proxy_plain(kind, port, backend, tls, admin=None, binary=None, args=(), env=None, proxy_extra=""):
    sfx = "-tls" if tls else ""
    kv = dict(zip(("CERT", "KEY", "PEM"), tls)) if tls else {}
    if kind == "mcplb":
        conf = render(f"mcplb{sfx}.toml.tmpl", f"mcplb-{port}.toml", LISTEN=port, BACKEND=backend, **kv)
        if proxy_extra:
            with open(conf) as f:
                text = f.read().replace("[proxy]\n", f"[proxy]\n{proxy_extra}\n", 1)
            with open(conf, "w") as f:
                f.write(text)
        if admin:
            with open(conf, "a") as f:
                f.write(f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n')
        p = spawn(["taskset", "-c", "0", binary or mcplb_bin(), "run", "--config", conf, *args], f"mcplb-{port}",
                  env={**os.environ, **env} if env else None)
        wait_port(port, p)
        time.sleep(0.2)
        with open(os.path.join(RUNDIR, f"mcplb-{port}.log"), errors="replace") as f:
            m = re.search(r"mcplb listening on .*", f.read())
        return Target(kind, port, [p], [p.pid], m.group(0) if m else "")
    if kind == "nginx":
        conf = render(f"nginx{sfx}.conf.tmpl", f"nginx-{port}.conf", LISTEN=port, BACKEND=backend, **kv)
        for d in ("body", "proxy"):
            os.makedirs(os.path.join(RUNDIR, f"nginx-{port}-{d}"), exist_ok=True)
        p = spawn(["taskset", "-c", "0", "nginx", "-p", RUNDIR, "-e", f"{RUNDIR}/nginx-{port}-startup.log", "-c", conf],
                  f"nginx-{port}")
        wait_port(port, p)
        workers = []
        for _ in range(50):
            workers = children(p.pid)
            if workers:
                break
            time.sleep(0.05)
        p._bench_children = workers
        # CPU is the worker's; RSS is master + worker (the master does not change).
        return Target(kind, port, [p], workers + [p.pid])
    if kind == "haproxy":
        conf = render(f"haproxy{sfx}.cfg.tmpl", f"haproxy-{port}.cfg", LISTEN=port, BACKEND=backend, **kv)
        p = spawn(["taskset", "-c", "0", "haproxy", "-db", "-f", conf], f"haproxy-{port}")
        wait_port(port, p)
        return Target(kind, port, [p], [p.pid])
    raise ValueError(kind)


# ---------------------------------------------------------------------------- measuring


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def wakeups(pid):
    """Voluntary context switches of all a process's threads (each is a sleep, so a wake-up)."""
    n = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/status") as f:
                n += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    except OSError:
        pass
    return n


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_anon_kib(pid):
    """Resident anonymous memory (RssAnon): the heap, stacks and the allocator's arenas, not the
    binary's pages (those do not grow with connections)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def tcp_mem_pages():
    """The kernel's TCP buffer memory, pages (/proc/net/sockstat): not in any process's RSS."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                v = line.split()
                return int(v[v.index("mem") + 1])
    return 0


def core_times():
    """{core: (busy, total)} jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + v[4]
                total = sum(v[:8])
                out[int(m.group(1))] = (total - idle, total)
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


BACKEND_PIDS = []  # the backend(s) running on core 1, for the foreign-load estimate


def own_core1_ticks():
    """CPU ticks of what this benchmark runs on core 1: backends, this process, finished children."""
    t = 0
    for pid in BACKEND_PIDS:
        try:
            t += cpu_ticks(pid)
        except OSError:
            pass
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk / mcplb-load, once waited for
    t += (ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime + ru_kids.ru_stime) * CLK_TCK
    return t


class Meter:
    """Proxy CPU (process utime+stime), per-core busy share, and the share of each core used by
    processes that are not part of the benchmark (another job on a shared machine)."""

    def __init__(self, target):
        self.pid = target.pids[0] if target and target.kind != "direct" else None

    def __enter__(self):
        self.t0 = time.time()
        self.c0 = core_times()
        self.p0 = cpu_ticks(self.pid) if self.pid else 0
        self.w0 = wakeups(self.pid) if self.pid else 0
        self.o0 = own_core1_ticks()
        return self

    def __exit__(self, *exc):
        self.wall = time.time() - self.t0
        c1 = core_times()
        self.cpu_s = (cpu_ticks(self.pid) - self.p0) / CLK_TCK if self.pid else None
        self.wakeups = wakeups(self.pid) - self.w0 if self.pid else None
        own1 = (own_core1_ticks() - self.o0) / CLK_TCK
        self.core_busy = {}
        for c in (0, 1):
            if c in c1 and c in self.c0:
                db, dt = c1[c][0] - self.c0[c][0], c1[c][1] - self.c0[c][1]
                self.core_busy[c] = round(100.0 * db / dt, 1) if dt else None
        b0, b1 = self.core_busy.get(0) or 0, self.core_busy.get(1) or 0
        self.other0 = round(max(0.0, b0 - 100.0 * (self.cpu_s or 0) / self.wall), 1)
        self.other1 = round(max(0.0, b1 - 100.0 * own1 / self.wall), 1)
        return False

    def as_dict(self, requests):
        d = {"wall_s": round(self.wall, 3), "core0_busy_pct": self.core_busy.get(0),
             "core1_busy_pct": self.core_busy.get(1), "core0_foreign_pct": self.other0,
             "core1_foreign_pct": self.other1}
        if self.cpu_s is not None:
            d["proxy_cpu_s"] = round(self.cpu_s, 3)
            d["proxy_cpu_pct"] = round(100.0 * self.cpu_s / self.wall, 1)
            d["cpu_us_per_req"] = round(self.cpu_s * 1e6 / requests, 2) if requests else None
            d["wakeups_per_req"] = round(self.wakeups / requests, 3) if requests else None
        return d


def bottleneck(cell):
    """Which side limited a closed-loop cell, from the busy shares."""
    p = cell.get("proxy_cpu_pct")
    c1 = cell.get("core1_busy_pct") or 0
    if p is not None and p >= 90:
        b = "proxy (core 0 saturated)"
    elif c1 >= 90:
        b = "load+backend (core 1 saturated)"
    elif (cell.get("core0_busy_pct") or 0) >= 90:
        b = "core 0 shared with a foreign job"
    else:
        b = f"neither core saturated (core0 {cell.get('core0_busy_pct')} %, core1 {c1} %)"
    noisy = [f"{cell[k]:.0f} % foreign on core {k[4]}" for k in ("core0_foreign_pct", "core1_foreign_pct")
             if (cell.get(k) or 0) > 10]
    return b + (f"; noisy: {', '.join(noisy)}" if noisy else "")


def write_lua():
    path = os.path.join(RUNDIR, "post.lua")
    lines = ['wrk.method = "POST"', "wrk.body = '" + WRK_BODY + "'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


LUA = None


def run_wrk(url, conns, secs, core="1"):
    argv = ["taskset", "-c", core, "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "-s", LUA, url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    reqs = int(m.group(1)) if m else 0
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"requests": reqs, "rps": float(rps.group(1)) if rps else 0.0, "errors": errors, "raw": out}


def run_load(url, conns, secs, rate=None, stateless=True, warmup="0s", timeout_extra=120, core="1"):
    argv = ["taskset", "-c", core, load_bin(), "run", "--url", url, "--connections", str(conns),
            "--duration", f"{secs}s", "--warmup", warmup, "--args", json.dumps(ARGS, separators=(",", ":")),
            "--json", "--quiet"]
    if stateless:
        argv.append("--stateless")
    if rate:
        argv += ["--rate", str(rate)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + timeout_extra)
    try:
        j = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"mcplb-load failed: {r.stdout} {r.stderr}")
    return j


def write_results(stem, text, facts, command, started, finished, load_start, load_end, settings, **data):
    """Writes a benchmark's results, `stem`.json (the facts, the command, when, the load average,
    the settings and `data`: every run) and `stem`.md (`text`), and prints the markdown."""
    with open(stem + ".json", "w") as f:
        json.dump({"facts": facts, "command": command, "started": started.isoformat(), "finished": finished.isoformat(),
                   "load_start": load_start, "load_end": load_end, "settings": settings, **data}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    log(f"wrote {stem}.md and {stem}.json")


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


# ---------------------------------------------------------------------------- phases

RESULTS = {}


def phase_throughput(targets):
    """Figures 1, 2 and 7: closed-loop ceiling, CPU-µs per request, mcplb-load vs wrk."""
    cells = {}
    for run in range(RUNS):
        for conns in CONNS:
            for tool in ("wrk", "mcplb-load"):
                for kind in TARGETS:  # interleaved: A B C D A B C D ...
                    t = targets[kind]
                    with Meter(t) as m:
                        if tool == "wrk":
                            r = run_wrk(t.url, conns, DURATION)
                            reqs, rps, errs = r["requests"], r["rps"], r["errors"]
                        else:
                            j = run_load(t.url, conns, DURATION)
                            reqs, rps, errs = j["ok"], j["throughput_rps"], j["errors"]["total"]
                    cell = {"run": run, "requests": reqs, "rps": round(rps, 1), "errors": errs}
                    cell.update(m.as_dict(reqs))
                    if tool == "mcplb-load":
                        cell["p99_us"] = j["latency_us"]["p99"]
                        cell["raw"] = j
                    else:
                        cell["raw"] = r["raw"]
                    cell["bottleneck"] = bottleneck(cell)
                    cells.setdefault(f"{tool}|{conns}|{kind}", []).append(cell)
                    log(f"throughput {tool:10s} c={conns:<4d} {kind:8s} run {run + 1}: {rps:9.0f} req/s, "
                        f"cpu/req {cell.get('cpu_us_per_req')} µs, core0 {cell['core0_busy_pct']} %, "
                        f"core1 {cell['core1_busy_pct']} %, errors {errs}")
    RESULTS["throughput"] = cells


def make_cert():
    """One ECDSA P-256 certificate for localhost/127.0.0.1, used by every proxy under test."""
    cert, key, pem = (os.path.join(RUNDIR, n) for n in ("tls-cert.pem", "tls-key.pem", "tls-haproxy.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    with open(pem, "w") as f, open(cert) as c, open(key) as k:
        f.write(c.read() + k.read())
    return cert, key, pem


def tls_facts(port):
    """What an OpenSSL client (as wrk is) negotiates: protocol, cipher, ALPN."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "http/1.1"],
                       input="", capture_output=True, text=True, timeout=20)
    out = r.stdout + r.stderr
    facts = {}
    for key, pat in (("protocol", r"New, (\S+), Cipher is"), ("cipher", r"Cipher is (\S+)"),
                     ("alpn", r"ALPN protocol:\s*(\S+)")):
        m = re.search(pat, out)
        facts[key] = m.group(1) if m else None
    return facts


def phase_https(backend_port):
    """HTTPS row: client -> TLS -> proxy -> plain backend. Each proxy terminates TLS with the same
    certificate; wrk keeps its connections alive, so the figure is record encryption and proxying,
    not handshakes (64 or 256 handshakes per cell, at its start)."""
    tls = make_cert()
    targets = {kd: start_proxy(kd, HTTPS_PORTS[kd], backend_port, tls=tls) for kd in PROXIES}
    info = {}
    try:
        for kd, t in targets.items():
            info[kd] = tls_facts(t.port)
            r = run_wrk(t.url, 64, 1)  # warm
            if r["requests"] == 0 or r["errors"]:
                raise RuntimeError(f"{kd} over https: {r['raw']}")
            log(f"https {kd}: {info[kd]}")
        cells = {}
        for run in range(RUNS):
            for conns in CONNS:
                for kd in PROXIES:  # interleaved
                    t = targets[kd]
                    with Meter(t) as m:
                        r = run_wrk(t.url, conns, DURATION)
                    cell = {"run": run, "requests": r["requests"], "rps": round(r["rps"], 1), "errors": r["errors"],
                            "raw": r["raw"]}
                    cell.update(m.as_dict(r["requests"]))
                    cell["bottleneck"] = bottleneck(cell)
                    cells.setdefault(f"wrk|{conns}|{kd}", []).append(cell)
                    log(f"https wrk c={conns:<4d} {kd:8s} run {run + 1}: {r['rps']:9.0f} req/s, "
                        f"cpu/req {cell.get('cpu_us_per_req')} µs, core0 {cell['core0_busy_pct']} %, "
                        f"core1 {cell['core1_busy_pct']} %, errors {r['errors']}")
        RESULTS["https"] = {"cells": cells, "tls": info}
    finally:
        for t in targets.values():
            t.stop()


def phase_agreement(mock):
    """Figure 7 without the shared core: wrk and mcplb-load on core 0, alone, against the mock on core 1."""
    cells = {}
    for run in range(RUNS):
        for conns in CONNS:
            for tool in ("wrk", "mcplb-load"):
                with Meter(None) as m:
                    if tool == "wrk":
                        r = run_wrk(mock.url, conns, DURATION, core="0")
                        rps, errs = r["rps"], r["errors"]
                    else:
                        j = run_load(mock.url, conns, DURATION, core="0")
                        rps, errs = j["throughput_rps"], j["errors"]["total"]
                cell = {"run": run, "rps": round(rps, 1), "errors": errs}
                cell.update(m.as_dict(None))
                cells.setdefault(f"{tool}|{conns}", []).append(cell)
                log(f"agreement {tool:10s} c={conns:<4d} run {run + 1}: {rps:9.0f} req/s, core0 (load) "
                    f"{cell['core0_busy_pct']} %, core1 (mock) {cell['core1_busy_pct']} %")
    RESULTS["agreement"] = cells


def ceiling():
    """mcplb's measured ceiling: the higher median of its mcplb-load closed-loop cells."""
    th = RESULTS.get("throughput", {})
    best = [med([c["rps"] for c in th.get(f"mcplb-load|{n}|mcplb", [])]) for n in CONNS]
    best = [b for b in best if b]
    return max(best) if best else None


def phase_latency(targets):
    """Figure 3: open-loop latency at 25/50/75 % of mcplb's ceiling and at FIXED_RATE."""
    ceil = ceiling()
    if not ceil:
        j = run_load(targets["mcplb"].url, 256, max(3, DURATION // 2))
        ceil = j["throughput_rps"]
    rates = [("25 %", round(ceil * 0.25)), ("50 %", round(ceil * 0.50)), ("75 %", round(ceil * 0.75)),
             (f"{FIXED_RATE}/s", FIXED_RATE)]
    cells = {}
    for run in range(RUNS):
        for label, rate in rates:
            for kind in TARGETS:
                t = targets[kind]
                with Meter(t) as m:
                    j = run_load(t.url, LAT_CONNS, LAT_DURATION, rate=rate, warmup="1s")
                cell = {"run": run, "rate": rate, "achieved_rps": round(j["throughput_rps"], 1),
                        "errors": j["errors"]["total"], "latency_us": j["latency_us"], "send_lag_us": j["send_lag_us"]}
                cell.update(m.as_dict(None))
                cells.setdefault(f"{label}|{kind}", []).append(cell)
                lat = j["latency_us"]
                log(f"latency {label:>8s} ({rate}/s) {kind:8s} run {run + 1}: p50 {lat['p50']} p99 {lat['p99']} "
                    f"p99.9 {lat['p99.9']} µs, achieved {j['throughput_rps']:.0f}/s, errors {j['errors']['total']}")
    RESULTS["latency"] = {"ceiling_rps": ceil, "rates": rates, "connections": LAT_CONNS, "cells": cells}


def admin_json(port, path="/stats"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def loop_gaps(port):
    """mcplb's loop-gap counts since start (its admin port's /stats), or None."""
    try:
        return admin_json(port)["loop_gaps"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def gap_delta(before, after):
    """The loop gaps counted between two readings: per bucket, the count and the longest since
    start (a max cannot be differenced)."""
    if not before or not after:
        return None
    b = {x["le_us"]: x["count"] for x in before["buckets"]}
    return {"count": after["count"] - before["count"], "sum_us": after["sum_us"] - before["sum_us"],
            "max_us_since_start": after["max_us"],
            "buckets": [{"le_us": x["le_us"], "count": x["count"] - b.get(x["le_us"], 0)} for x in after["buckets"]]}


def phase_tail(targets):
    """Issue 18's tail cell: open loop at TAIL_RATE over TAIL_CONNS connections, p99/p99.9/max of
    every target in the same run (latency from the schedule), the load generator's own send lag
    beside it, and mcplb's loop gaps over each of its cells."""
    cells = {}
    # Busy loops that keep their cores from idling, at the lowest priority (TAIL_SPIN).
    spinners = [spawn(["chrt", "--idle", "0", "taskset", "-c", c, "sh", "-c", "while :; do :; done"], f"spin-{c}")
                for c in TAIL_SPIN]
    for run in range(RUNS):
        order = list(TAIL_TARGETS)
        # The mcplb builds' order rotates every run, so none always follows another.
        at = [i for i, k in enumerate(order) if k in BUILDS]
        builds = [order[i] for i in at]
        for i, k in zip(at, builds[run % len(builds):] + builds[:run % len(builds)] if builds else []):
            order[i] = k
        for kind in order:
            t = targets[kind]
            admin = ADMIN_PORTS.get(kind)
            g0 = loop_gaps(admin) if admin else None
            with Meter(t) as m:
                j = run_load(t.url, TAIL_CONNS, TAIL_DURATION, rate=TAIL_RATE, warmup="1s")
            cell = {"run": run, "rate": TAIL_RATE, "achieved_rps": round(j["throughput_rps"], 1),
                    "errors": j["errors"]["total"], "latency_us": j["latency_us"], "send_lag_us": j["send_lag_us"]}
            # CPU per request: the proxy's CPU over the cell (warm-up included) / the requests sent in it.
            cell.update(m.as_dict(round(j["throughput_rps"] * (TAIL_DURATION + 1))))
            if admin:
                time.sleep(1.2)  # the worker moves its counts to the admin port once a second
                cell["loop_gaps"] = gap_delta(g0, loop_gaps(admin))
            cells.setdefault(kind, []).append(cell)
            lat, lag = j["latency_us"], j["send_lag_us"] or {}
            log(f"tail {TAIL_RATE}/s x {TAIL_CONNS} conns {kind:8s} run {run + 1}: p50 {lat['p50']} p99 {lat['p99']} "
                f"p99.9 {lat['p99.9']} max {lat['max']} µs; send lag p99 {lag.get('p99')} max {lag.get('max')} µs; "
                f"achieved {j['throughput_rps']:.0f}/s, errors {j['errors']['total']}")
    for p in spinners:
        stop(p)
    RESULTS["tail"] = {"rate": TAIL_RATE, "connections": TAIL_CONNS, "duration_s": TAIL_DURATION, "cells": cells,
                       "spin_cores": TAIL_SPIN,
                       "builds": {k: os.path.realpath(mcplb_bin(k)) for k in BUILDS if k in TAIL_TARGETS}}


def gen_bound(cell):
    """Whether an open-loop cell measured mcplb-load more than its target: its send lag p99 at
    least half the latency p99."""
    lag = (cell.get("send_lag_us") or {}).get("p99")
    return lag is not None and lag >= 0.5 * cell["latency_us"]["p99"]


def tail_report(tail):
    """The tail phase's section: per target, medians [min–max] of the runs."""
    L = [f"## Tail: open loop at {tail['rate']} req/s over {tail['connections']} connections\n",
         f"mcplb-load (timerfd pacer, latency from the schedule, corrected for coordinated omission), "
         f"{tail['duration_s']} s a cell after 1 s of warm-up, targets in turn within each run. "
         "Send lag: how late mcplb-load sent against its schedule (its own stall, part of every latency "
         "figure of the cell). Foreign CPU: the share of a core used by processes not part of the benchmark "
         "(another job on a shared machine). Proxy wake-ups: its voluntary context switches (sleeps) per request "
         "over the cell. Medians [min–max] of the runs, µs.\n",
         "| target | p50 | p99 | p99.9 | max | send lag p99 | send lag max | achieved req/s | errors | foreign CPU % core 0 | foreign CPU % core 1 | proxy CPU µs/req | proxy wake-ups/req |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    c = tail["cells"]
    kinds = ["direct", *BUILDS, "nginx", "haproxy"]
    if tail.get("spin_cores"):
        L.insert(2, f"Cores {', '.join(tail['spin_cores'])} were kept from idling by a SCHED_IDLE busy loop (TAIL_SPIN): "
                    "it runs only when nothing else wants the core, and shows as foreign CPU.\n")
    if any(k in c for k in EXTRA_PORTS):
        b = tail.get("builds", {})
        L.insert(2, "mcplb builds in the same run (their order rotated every run): "
                    + ", ".join(f"{NAMES[k]} = `{b.get(k)}`" for k in BUILDS if k in c) + ".\n")
    for kd in kinds:
        xs = c.get(kd, [])
        if not xs:
            continue
        lat = lambda p: spread([x["latency_us"][p] for x in xs], f0)  # noqa: E731
        lag = lambda p: spread([(x["send_lag_us"] or {}).get(p) for x in xs], f0)  # noqa: E731
        L.append(f"| {NAMES[kd]} | {lat('p50')} | {lat('p99')} | {lat('p99.9')} | {lat('max')} | {lag('p99')} | "
                 f"{lag('max')} | {spread([x['achieved_rps'] for x in xs], f0)} | {sum(x['errors'] for x in xs)} | "
                 f"{spread([x.get('core0_foreign_pct') for x in xs], f0)} | {spread([x.get('core1_foreign_pct') for x in xs], f0)} | "
                 f"{spread([x.get('cpu_us_per_req') for x in xs], f2) if kd != 'direct' else '–'} | "
                 f"{spread([x.get('wakeups_per_req') for x in xs], f2) if kd != 'direct' else '–'} |")
    L.append("")
    bound = {kd: sum(gen_bound(x) for x in c.get(kd, [])) for kd in kinds if kd in c}
    if any(bound.values()):
        L.append("Cells where mcplb-load's own send lag p99 was at least half the target's latency p99 measure the "
                 "load generator (or its core), not the target: "
                 + ", ".join(f"{NAMES[kd]} {n} of {len(c.get(kd, []))}" for kd, n in bound.items()) + ".\n")
    pairs = [(mk, peer) for mk in BUILDS for peer in ("nginx", "haproxy")] + [(k, "mcplb") for k in EXTRA_PORTS]
    for mk, peer in pairs:
        m, pr = c.get(mk, []), c.get(peer, [])
        if not m or not pr:
            continue
        parts = []
        cpu = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(m, pr)
               if a.get("cpu_us_per_req") and b.get("cpu_us_per_req")]
        for p in ("p99", "p99.9"):
            # Same-run ratios: each run's mcplb figure over the peer's of the same run, over the
            # runs where neither cell was the load generator's.
            rs = [a["latency_us"][p] / b["latency_us"][p] for a, b in zip(m, pr)
                  if b["latency_us"][p] and not gen_bound(a) and not gen_bound(b)]
            parts.append(f"{p} {spread(rs, f2)}× ({len(rs)} of {min(len(m), len(pr))} runs)")
        L.append(f"- {NAMES[mk]} / {NAMES[peer]} in the same run, runs where neither was load-generator bound: "
                 f"{', '.join(parts)}; proxy CPU per request (all runs) {spread(cpu, f2)}×.")
    for mk in BUILDS:
        L.extend(loop_gap_table(NAMES[mk], [x.get("loop_gaps") for x in c.get(mk, []) if x.get("loop_gaps")]))
    L.append("")
    return L


def loop_gap_table(name, gaps):
    """An mcplb's loop gaps over its tail cells, one column per run."""
    L = []
    if gaps:
        L.append("")
        L.append(f"{name}'s loop gaps over its cells (time its worker went without handling any of its requests "
                 "while it had some in flight; `/stats` `loop_gaps`): gaps per bucket, one column per run.\n")
        L.append("| gap at most | " + " | ".join(f"run {i + 1}" for i in range(len(gaps))) + " |")
        L.append("|---" * (len(gaps) + 1) + "|")
        for i, b in enumerate(gaps[0]["buckets"]):
            le = b["le_us"]
            L.append(f"| {f'{le} µs' if le is not None else 'longer'} | "
                     + " | ".join(str(g["buckets"][i]["count"]) for g in gaps) + " |")
        L.append("| longest since start | " + " | ".join(f"{g['max_us_since_start']} µs" for g in gaps) + " |")
    return L


def parse_strace(path):
    calls, top = None, []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or not re.match(r"^[\d.]+$", parts[0]):
                continue
            if parts[-1] == "total":
                calls = int(parts[3])
            elif len(parts) >= 5:
                top.append((parts[-1], int(parts[3])))
    top.sort(key=lambda x: -x[1])
    return calls, top[:6]


def phase_syscalls(targets):
    """Figure 4: syscalls per request under strace -c -f (counts only; strace slows the run)."""
    cells = {}
    for run in range(RUNS):
        for kind in PROXIES:
            t = targets[kind]
            out = os.path.join(RUNDIR, f"strace-{kind}-{run}.txt")
            st = spawn(["strace", "-c", "-f", "-o", out, "-p", str(t.pids[0])], f"strace-{kind}")
            time.sleep(1.0)
            r = run_wrk(t.url, 64, STRACE_SECS)
            os.kill(st.pid, signal.SIGINT)
            try:
                st.wait(15)
            except subprocess.TimeoutExpired:
                pass
            stop(st)
            calls, top = parse_strace(out)
            per = round(calls / r["requests"], 3) if calls and r["requests"] else None
            cells.setdefault(kind, []).append({"run": run, "requests": r["requests"], "syscalls": calls,
                                               "per_request": per, "top": top,
                                               "strace": open(out).read()})
            log(f"syscalls {kind:8s} run {run + 1}: {calls} syscalls / {r['requests']} requests = {per}; top {top[:3]}")
            time.sleep(0.5)
    RESULTS["syscalls"] = cells


def one_request(port):
    """Bytes of one full request, and the reader of its answer."""
    body = WRK_BODY.encode()
    head = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def read_answer(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed before the answer head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        need = int(m.group(1))
        while len(rest) < need:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("closed mid-body")
            rest += chunk
    elif re.search(rb"(?im)^transfer-encoding:.*chunked", head):
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("closed mid-body")
            rest += chunk
    return status


def open_idle(port, req, n):
    """`n` connections that each send one request and read its answer, left open; and how many
    answers were not 200."""
    socks, bad = [], 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        if read_answer(s) != 200:
            bad += 1
        socks.append(s)
    return socks, bad


def settled_rss(target):
    """(RssAnon, VmRSS) of the target's processes, KiB, after IDLE_WAIT s."""
    time.sleep(IDLE_WAIT)
    return sum(rss_anon_kib(p) for p in target.pids), sum(rss_kib(p) for p in target.pids)


def idle_connections(target, n):
    """Anonymous RSS added by `n` idle connections, opened in IDLE_STEPS equal steps (RssAnon read
    after each), over a baseline that already holds IDLE_WARM idle connections: what a process
    allocates once, at start-up or for its first connections, is behind the baseline, and so is
    the start-up memory its allocator returns late (opening connections is what makes mimalloc
    purge it). The total per connection includes the growth of per-connection tables (a table
    that doubles shows as a jump at one step); the median step is the cost of a connection
    between such jumps."""
    req = one_request(target.port)
    # warm the path (and the upstream connection) before the baseline
    s = socket.create_connection(("127.0.0.1", target.port))
    for _ in range(20):
        s.sendall(req)
        read_answer(s)
    s.close()
    socks, bad = open_idle(target.port, req, IDLE_WARM)
    before, vm_before = settled_rss(target)
    tcp_before = tcp_mem_pages()
    t0 = time.time()
    steps, sizes = [before], []
    for i in range(IDLE_STEPS):
        k = n * (i + 1) // IDLE_STEPS - n * i // IDLE_STEPS
        more, b = open_idle(target.port, req, k)
        socks += more
        bad += b
        sizes.append(k)
        steps.append(settled_rss(target)[0])
    after, vm_after = steps[-1], sum(rss_kib(p) for p in target.pids)
    opened = time.time() - t0 - IDLE_WAIT * IDLE_STEPS
    tcp_after = tcp_mem_pages()
    # still open? (a proxy that dropped idle connections would make the figure meaningless)
    alive = 0
    sample = socks[:: max(1, len(socks) // 200)]
    for s in sample:
        s.setblocking(False)
        try:
            alive += 0 if s.recv(1) == b"" else 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, no TIME_WAIT
        s.close()
    step_bytes = [round((y - x) * 1024 / k) for x, y, k in zip(steps, steps[1:], sizes)]
    return {"rss_before_kib": before, "rss_after_kib": after, "per_conn_bytes": round((after - before) * 1024 / n),
            "median_step_bytes": round(statistics.median(step_bytes)), "step_bytes": step_bytes, "rss_steps_kib": steps,
            "vmrss_before_kib": vm_before, "vmrss_after_kib": vm_after, "warm_conns": IDLE_WARM,
            "tcp_mem_pages_before": tcp_before, "tcp_mem_pages_after": tcp_after,
            "non_200": bad, "open_s": round(opened, 2), "alive_sampled": f"{alive}/{len(sample)}"}


def start_memory_target(kind, port, backend_port):
    """A memory-phase target: a proxy of PROXIES, or mcplb on its epoll driver (`mcplb-epoll`) or
    with mimalloc's default purge delay (`mcplb-lazy`). mcplb otherwise runs with
    MIMALLOC_PURGE_DELAY=MEM_PURGE_DELAY: mimalloc (v3, libmimalloc-sys's default) returns freed
    memory only at a later allocation, at least its purge delay (1 s by default) after the free,
    so an idle process keeps what it freed last resident, and opening connections purges it: RSS
    then falls while connections open."""
    if kind not in ("mcplb", "mcplb-epoll", "mcplb-lazy", "mcplb-b", "mcplb-b-epoll"):
        return start_proxy(kind, port, backend_port)
    env = {} if kind == "mcplb-lazy" or MEM_PURGE_DELAY == "" else {"MIMALLOC_PURGE_DELAY": MEM_PURGE_DELAY}
    args = ("--driver", "legacy") if kind.endswith("-epoll") else ()
    binary = mcplb_bin("mcplb-b") if kind.startswith("mcplb-b") else None
    # Its idle connections must outlive a slow cell (11 000 connections opened on a busy machine
    # can take a minute; the default client_idle_timeout is 60 s).
    t = start_proxy_plain("mcplb", port, backend_port, None, binary=binary, args=args, env=env,
                          proxy_extra='client_idle_timeout = "600s"')
    t.kind = kind
    return t


def phase_memory(backend_port):
    """Figure 5: anonymous RSS added per idle client connection (fresh proxy each run, IDLE_WARM
    idle connections open before the baseline, IDLE_CONNS more in two halves)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNS + IDLE_WARM + 1000
    want = min(hard, need) if hard != resource.RLIM_INFINITY else need
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    n = min(IDLE_CONNS, want - IDLE_WARM - 200)
    cells = {}
    for run in range(RUNS):
        for kind in MEM_TARGETS:
            port = PROXY_PORTS["mcplb" if kind.startswith("mcplb") else kind] + 10
            t = start_memory_target(kind, port, backend_port)
            try:
                r = idle_connections(t, n)
            finally:
                t.stop()
            r["run"], r["connections"] = run, n
            cells.setdefault(kind, []).append(r)
            if r["alive_sampled"].split("/")[0] != r["alive_sampled"].split("/")[1]:
                log(f"memory {kind}: some connections were closed before the end: this run's figure is too low")
            log(f"memory {kind:11s} run {run + 1}: {r['per_conn_bytes']} B per idle connection, median step "
                f"{r['median_step_bytes']} (steps {' '.join(map(str, r['step_bytes']))}; RssAnon {r['rss_before_kib']} -> "
                f"{r['rss_after_kib']} KiB, alive {r['alive_sampled']}, non-200 {r['non_200']})")
    RESULTS["memory"] = {"connections": n, "warm": IDLE_WARM, "steps": IDLE_STEPS, "purge_delay": MEM_PURGE_DELAY,
                         "cells": cells}


def phase_sessions():
    """Figure 6: SESSIONS concurrent MCP sessions (initialize, notifications/initialized, tools/call) through mcplb."""
    mock = start_mock(P_MOCK_SESS, stateless=False)
    t = start_proxy("mcplb", PROXY_PORTS["mcplb"] + 20, P_MOCK_SESS)
    cells = {"closed": [], "open": []}
    try:
        for run in range(RUNS):
            for mode in ("closed", "open"):
                rate = SESSION_RATE if mode == "open" else None
                with Meter(t) as m:
                    j = run_load(t.url, SESSIONS, DURATION, rate=rate, stateless=False, warmup="1s")
                total = j["ok"] + j["errors"]["total"]
                cell = {"run": run, "rps": round(j["throughput_rps"], 1), "ok": j["ok"], "errors": j["errors"],
                        "error_rate_pct": round(100.0 * j["errors"]["total"] / total, 4) if total else None,
                        "latency_us": j["latency_us"], "raw": j}
                cell.update(m.as_dict(None))
                cells[mode].append(cell)
                log(f"sessions {mode:6s} run {run + 1}: {j['throughput_rps']:.0f} req/s, p95 {j['latency_us']['p95']} µs, "
                    f"errors {j['errors']['total']}")
    finally:
        t.stop()
        mock.stop()
    RESULTS["sessions"] = {"sessions": SESSIONS, "rate": SESSION_RATE, "cells": cells}


def phase_xcheck():
    """Cross-check: nginx `return 200` as the backend, wrk closed loop at 64 connections."""
    be = start_nginx_backend(P_NGX_BACKEND)
    targets = {"direct": be}
    try:
        for k in PROXIES:
            targets[k] = start_proxy(k, PROXY_PORTS[k] + 30, P_NGX_BACKEND)
        for k in TARGETS:
            run_wrk(targets[k].url, 64, 1)
        cells = {}
        for run in range(RUNS):
            for kind in TARGETS:
                t = targets[kind]
                with Meter(t) as m:
                    r = run_wrk(t.url, 64, DURATION)
                cell = {"run": run, "requests": r["requests"], "rps": round(r["rps"], 1), "errors": r["errors"]}
                cell.update(m.as_dict(r["requests"]))
                cell["bottleneck"] = bottleneck(cell)
                cells.setdefault(kind, []).append(cell)
                log(f"xcheck {kind:8s} run {run + 1}: {r['rps']:.0f} req/s, cpu/req {cell.get('cpu_us_per_req')} µs, "
                    f"errors {r['errors']}")
    finally:
        for t in targets.values():
            t.stop()
    RESULTS["xcheck"] = cells


# ---------------------------------------------------------------------------- report


def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""
    except Exception as e:  # noqa: BLE001 - a fact we could not read is reported as such
        return f"? ({e})"


def machine_facts():
    return {
        "nproc": sh("nproc --all"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip(),
        "kernel": sh("uname -r"),
        "nginx": sh("nginx -v 2>&1"),
        "haproxy": sh("haproxy -v 2>&1 | head -1"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        "strace": sh("strace -V | head -1"),
        "python": sys.version.split()[0],
        "rustc": sh("rustc -V"),
        "mcplb_commit": sh(f"git -C {ROOT} rev-parse --short HEAD"),
        "mcplb_bin": MCPLB_BIN["mcplb"] and os.path.realpath(MCPLB_BIN["mcplb"]),
        "mcplb_dirty": sh(f"git -C {ROOT} status --porcelain --untracked-files=no -- '*.rs' '*Cargo.toml' Cargo.lock | wc -l") != "0",
        "ulimit_n": "%d/%d" % resource.getrlimit(resource.RLIMIT_NOFILE),
    }


def k(x):
    return "–" if x is None else (f"{x / 1000:.1f} k" if x >= 1000 else f"{x:.0f}")


def spread(xs, fmt, unit=""):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{fmt(m)}{unit}"
    return f"{fmt(m)}{unit} [{fmt(min(xs))}–{fmt(max(xs))}]"


def f1(x):
    return f"{x:.1f}"


def f2(x):
    return f"{x:.2f}"


def f0(x):
    return f"{x:.0f}"


def kf(x):
    return f"{x / 1000:.1f}k"


def ratio_text(m, peer, higher_is_better):
    if m is None or peer is None or peer == 0:
        return "–"
    r = m / peer
    if higher_is_better:
        word = "more" if r >= 1 else "less"
        return f"{r:.2f}× ({abs(r - 1) * 100:.0f} % {word})"
    word = "lower" if r <= 1 else "higher"
    return f"{r:.2f}× ({abs(r - 1) * 100:.0f} % {word})"


def closed_loop_cells(cs, foreign=False):
    """The table cells of one closed-loop cell's runs: req/s, CPU, busy shares, errors, bottleneck."""
    bn = sorted({x["bottleneck"].split(" (")[0].split(";")[0] for x in cs})
    fo = [max(x.get("core0_foreign_pct") or 0, x.get("core1_foreign_pct") or 0) for x in cs]
    if max(fo) > 10:
        bn.append(f"noisy (up to {max(fo):.0f} % of a core foreign)")
    cells = [spread([x["rps"] for x in cs], kf), spread([x.get("cpu_us_per_req") for x in cs], f2),
             spread([x.get("proxy_cpu_pct") for x in cs], f0), spread([x["core0_busy_pct"] for x in cs], f0),
             spread([x["core1_busy_pct"] for x in cs], f0), str(sum(x["errors"] for x in cs)), ", ".join(bn)]
    if foreign:
        cells.append(f"{spread([x.get('core0_foreign_pct') for x in cs], f0)} / "
                     f"{spread([x.get('core1_foreign_pct') for x in cs], f0)}")
    return " | ".join(cells)


def report(facts, command, started, finished, load_start, load_end):
    th = RESULTS.get("throughput", {})
    L = []
    date = started.strftime("%Y-%m-%d")
    L.append(f"# Side-by-side: mcplb vs nginx vs HAProxy vs direct ({date})\n")
    L.append("Produced by one command (see *Command*), following `../shared/BENCHMARKING.md` and issue #7. "
             "Every figure is the median of the runs with [min–max] spread; all systems measured in the same run, "
             "on the same backend, with the same load.\n")
    L.append("## Machine and setup\n")
    L.append(f"- {facts['nproc']} cores ({facts['cpu']}), kernel {facts['kernel']}; {facts['nginx']}; "
             f"{facts['haproxy']}; {facts['wrk']}; {facts['strace']}; {facts['rustc']}; Python {facts['python']}.")
    dirty = " (with uncommitted changes in the Rust crates)" if facts["mcplb_dirty"] else ""
    built = (f"mcplb binary `{facts['mcplb_bin']}`" if facts.get("mcplb_bin")
             else f"mcplb commit `{facts['mcplb_commit']}`{dirty}, release build")
    L.append(f"- {built}; {RESULTS.get('mcplb_info', '')}.")
    L.append(f"- Load average (1/5/15 min) at start {' '.join(load_start)}, at end {' '.join(load_end)}. "
             f"Run took {(finished - started).total_seconds() / 60:.1f} min.")
    fo = [max(c.get("core0_foreign_pct") or 0, c.get("core1_foreign_pct") or 0)
          for cs in th.values() for c in cs]
    if fo:
        L.append(f"- Foreign load (CPU on cores 0/1 not used by the benchmark's own processes) during the closed-loop "
                 f"cells: median {statistics.median(fo):.0f} %, max {max(fo):.0f} % of a core"
                 + (" — **the machine was not quiet; treat absolute figures with care, ratios less so**." if max(fo) > 10 else "."))
    L.append("- Core 0: the proxy under test (mcplb: `workers = 1`; nginx: `worker_processes 1`; HAProxy: "
             "`nbthread 1`), each started with `taskset -c 0`. Core 1: the backend (`mcplb-load mock --stateless "
             "--threads 1`) and the load generator (`wrk -t1` or `mcplb-load run --threads 1`). Loopback only. "
             "The three proxies stay up together (the idle ones cost nothing); cells are interleaved "
             "(direct, mcplb, nginx, HAProxy, then again) so slow drifts hit all alike.")
    L.append("- Configs: `bench/conf/` (nginx: upstream keepalive 512, keepalive_requests lifted, access_log off, "
             "proxy_buffering off, HTTP/1.1 with `Connection \"\"`; HAProxy: http-reuse always, http-keep-alive, "
             "no logs, timeout server 300 s; mcplb: defaults).")
    L.append(f"- Request: POST /mcp, a stateless (2026-07-28) `tools/call` of the `echo` tool, {len(WRK_BODY)}-byte "
             f"body (`{WRK_BODY}`), with `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` headers; the same request "
             f"from wrk (Lua script) and mcplb-load (`--stateless --args`). Answer: a {RESULTS.get('answer_bytes', '?')}-byte JSON-RPC result.")
    L.append(f"- Durations: closed loop {DURATION} s per cell, open loop {LAT_DURATION} s (+1 s warm-up), "
             f"{RUNS} runs per cell.\n")

    # ---------------- headline
    h0 = len(L)
    L.append("## Headline: mcplb's ratio to each peer\n")
    L.append("| figure | direct | mcplb | nginx | HAProxy | mcplb vs nginx | mcplb vs HAProxy |")
    L.append("|---|---|---|---|---|---|---|")

    short = []  # where mcplb falls short of a peer

    def compare(m, peer, higher_is_better, diff, name, peer_name):
        if m is None or peer is None:
            return "–"
        if diff:  # added latency: a difference, ratios of small or negative numbers mean nothing
            t = f"{m - peer:+.0f} µs"
            if m - peer > 0:
                short.append(f"{name}: mcplb adds {m - peer:.0f} µs more than {peer_name} ({m:.0f} vs {peer:.0f} µs)")
            return t
        t = ratio_text(m, peer, higher_is_better)
        worse = (m < peer) if higher_is_better else (m > peer)
        if worse and peer:
            short.append(f"{name}: mcplb {m:.2f} vs {peer_name} {peer:.2f} ({abs(m / peer - 1) * 100:.0f} % "
                         f"{'less' if higher_is_better else 'more'})")
        return t

    def row(name, vals, fmt, higher_is_better, show_direct=True, diff=False):
        m, n, h = vals.get("mcplb"), vals.get("nginx"), vals.get("haproxy")
        d = vals.get("direct")
        cells = [fmt(d) if (show_direct and d is not None) else "–"] + [fmt(x) if x is not None else "–" for x in (m, n, h)]
        L.append(f"| {name} | " + " | ".join(cells) + f" | {compare(m, n, higher_is_better, diff, name, 'nginx')} | "
                 f"{compare(m, h, higher_is_better, diff, name, 'HAProxy')} |")

    for tool in ("wrk", "mcplb-load"):
        for c in CONNS:
            vals = {kd: med([x["rps"] for x in th.get(f"{tool}|{c}|{kd}", [])]) for kd in TARGETS}
            if any(vals.values()):
                row(f"max req/s, {c} conns ({tool})", vals, kf, True)
    for tool in ("wrk", "mcplb-load"):
        for c in CONNS[:1] if tool == "mcplb-load" else CONNS:
            vals = {kd: med([x.get("cpu_us_per_req") for x in th.get(f"{tool}|{c}|{kd}", [])]) for kd in PROXIES}
            if any(vals.values()):
                row(f"proxy CPU µs per request, {c} conns ({tool})", vals, f2, False, show_direct=False)
    lat = RESULTS.get("latency")
    if lat:
        for label, rate in lat["rates"]:
            if label not in ("50 %", f"{FIXED_RATE}/s"):
                continue
            for p in ("p50", "p99", "p99.9"):
                dv = med([x["latency_us"][p] for x in lat["cells"].get(f"{label}|direct", [])])
                vals = {kd: (med([x["latency_us"][p] for x in lat["cells"].get(f"{label}|{kd}", [])]) - dv)
                        for kd in PROXIES if dv is not None}
                row(f"added {p} µs at {rate}/s ({label if '%' in label else 'fixed'})", vals, f0, False, show_direct=False,
                    diff=True)
    tail = RESULTS.get("tail")
    if tail:
        for p in ("p99", "p99.9"):
            vals = {kd: med([x["latency_us"][p] for x in tail["cells"].get(kd, [])]) for kd in TARGETS}
            row(f"tail {p} µs, open loop {tail['rate']}/s over {tail['connections']} conns", vals, f0, False)
    sc = RESULTS.get("syscalls")
    if sc:
        vals = {kd: med([x["per_request"] for x in sc.get(kd, [])]) for kd in PROXIES}
        row("syscalls per request (strace -c -f)", vals, f2, False, show_direct=False)
    mem = RESULTS.get("memory")
    if mem:
        vals = {kd: med([x["per_conn_bytes"] / 1024 for x in mem["cells"].get(kd, [])]) for kd in PROXIES}
        row(f"KiB per idle connection ({mem['connections']} conns)", vals, f2, False, show_direct=False)
    ses = RESULTS.get("sessions")
    if ses:
        c = ses["cells"]
        L.append(f"| {ses['sessions']} MCP sessions, closed loop (mcplb only) | – | "
                 f"{kf(med([x['rps'] for x in c['closed']]))} req/s, p95 {med([x['latency_us']['p95'] for x in c['closed']]) / 1000:.1f} ms, "
                 f"errors {sum(x['errors']['total'] for x in c['closed'])} | – | – | – | – |")
        ok = all(x["ok"] >= 0.99 * ses["rate"] * DURATION and x["latency_us"]["p95"] < 50000 and (x["error_rate_pct"] or 0) < 0.1
                 for x in c["open"])
        L.append(f"| seed floor: {ses['sessions']} sessions at {ses['rate']} req/s, P95 < 50 ms, errors < 0.1 % | – | "
                 f"{'**met**' if ok else '**NOT met**'}: {kf(med([x['rps'] for x in c['open']]))} req/s, p95 {med([x['latency_us']['p95'] for x in c['open']]) / 1000:.2f} ms, "
                 f"errors {sum(x['errors']['total'] for x in c['open'])} | – | – | – | – |")
    L.append("")
    L.append("Ratios: for req/s above 1 is better for mcplb; for CPU, syscalls and memory below 1 is better. "
             "Added latency is the target's percentile minus direct's at the same rate (it can be negative within "
             "noise); its comparison columns give mcplb's added latency minus the peer's (negative: mcplb adds less).\n")
    L.append("### Where mcplb falls short\n")
    if short:
        L.extend(f"- {x}" for x in short)
    else:
        L.append("- Nowhere in this run.")
    L.append("")
    if not any(x.startswith("| ") and not x.startswith("| figure") for x in L[h0:]):
        del L[h0:]  # a run of other phases only (e.g. PHASES=https): no headline figures

    # ---------------- details
    if th:
        L.append("## 1-2. Closed loop: max req/s and proxy CPU per request\n")
        L.append("| tool | conns | target | req/s | proxy CPU µs/req | proxy CPU % | core 0 busy % | core 1 busy % | errors | bottleneck |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for tool in ("wrk", "mcplb-load"):
            for c in CONNS:
                for kd in TARGETS:
                    cs = th.get(f"{tool}|{c}|{kd}", [])
                    if cs:
                        L.append(f"| {tool} | {c} | {NAMES[kd]} | " + closed_loop_cells(cs) + " |")
        L.append("")
        L.append("Bottleneck rule: proxy process ≥ 90 % of a core → the proxy; else core 1 ≥ 90 % busy → the load "
                 "generator and backend (the cell then measures core 1, not the proxy, and CPU µs per request is the "
                 "figure that still compares the proxies).\n")
        L.append("### 7. mcplb-load vs wrk on the same target (req/s ratio, medians)\n")
        L.append("| conns | " + " | ".join(NAMES[kd] for kd in TARGETS) + " |")
        L.append("|---|" + "---|" * len(TARGETS))
        agree = []
        for c in CONNS:
            cells = []
            for kd in TARGETS:
                w = med([x["rps"] for x in th.get(f"wrk|{c}|{kd}", [])])
                ml = med([x["rps"] for x in th.get(f"mcplb-load|{c}|{kd}", [])])
                if w and ml:
                    agree.append(ml / w)
                    cells.append(f"{ml / w:.3f}")
                else:
                    cells.append("–")
            L.append(f"| {c} | " + " | ".join(cells) + " |")
        if agree:
            worst = max(agree, key=lambda r: abs(r - 1))
            L.append(f"\nIn the benchmark layout (tool and backend share core 1) the worst disagreement is "
                     f"{abs(worst - 1) * 100:.1f} %: {'within' if abs(worst - 1) <= 0.10 else 'NOT within'} 10 %. "
                     "There the tool's own CPU cost is part of the figure: mcplb-load builds and parses every JSON "
                     "body and checks its id, wrk sends a fixed body and parses nothing, and what either spends "
                     "is taken from the backend on the same core.\n")
    ag = RESULTS.get("agreement")
    if ag:
        if not th:
            L.append("### 7. mcplb-load vs wrk on the same target\n")
        L.append("Same target, tool alone on core 0 and the mock backend alone on core 1 (so neither tool "
                 "shares its core):\n")
        L.append("| conns | wrk req/s | mcplb-load req/s | ratio | core 0 (tool) busy % | core 1 (mock) busy % |")
        L.append("|---|---|---|---|---|---|")
        worst = []
        for c in CONNS:
            w = [x["rps"] for x in ag.get(f"wrk|{c}", [])]
            ml = [x["rps"] for x in ag.get(f"mcplb-load|{c}", [])]
            if w and ml:
                r = med(ml) / med(w)
                worst.append(r)
                c0 = [x["core0_busy_pct"] for x in ag[f"wrk|{c}"]] + [x["core0_busy_pct"] for x in ag[f"mcplb-load|{c}"]]
                c1 = [x["core1_busy_pct"] for x in ag[f"wrk|{c}"]] + [x["core1_busy_pct"] for x in ag[f"mcplb-load|{c}"]]
                L.append(f"| {c} | {spread(w, kf)} | {spread(ml, kf)} | {r:.3f} | "
                         f"wrk {med(c0[:len(w)]):.0f}, mcplb-load {med(c0[len(w):]):.0f} | "
                         f"wrk {med(c1[:len(w)]):.0f}, mcplb-load {med(c1[len(w):]):.0f} |")
        if worst:
            wv = max(worst, key=lambda r: abs(r - 1))
            L.append(f"\nWorst disagreement here {abs(wv - 1) * 100:.1f} %: "
                     f"{'within' if abs(wv - 1) <= 0.10 else 'NOT within'} the 10 % of issue #7.\n")
    if lat:
        L.append(f"## 3. Open-loop latency (mcplb-load --rate, {lat['connections']} connections, µs)\n")
        L.append(f"mcplb's ceiling (median, mcplb-load closed loop): {lat['ceiling_rps']:.0f} req/s. Latency counts from "
                 "the scheduled send time (no coordinated omission). mcplb-load waits for each send time on a timerfd "
                 "(microsecond resolution); what lag remains (its p50 is shown) is in every figure, direct "
                 "included, which is why *added* latency is the figure to compare.\n")
        L.append("| rate | target | achieved req/s | p50 | p95 | p99 | p99.9 | added p50 | added p99 | added p99.9 | send lag p50 | errors | foreign CPU % (max) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, rate in lat["rates"]:
            dmed = {p: med([x["latency_us"][p] for x in lat["cells"].get(f"{label}|direct", [])]) for p in ("p50", "p99", "p99.9")}
            for kd in TARGETS:
                cs = lat["cells"].get(f"{label}|{kd}", [])
                if not cs:
                    continue
                pv = {p: [x["latency_us"][p] for x in cs] for p in ("p50", "p95", "p99", "p99.9")}
                add = {p: (med(pv[p]) - dmed[p]) if (kd != "direct" and dmed[p] is not None) else None for p in dmed}
                L.append(f"| {rate} ({label}) | {NAMES[kd]} | {spread([x['achieved_rps'] for x in cs], kf)} | "
                         f"{spread(pv['p50'], f0)} | {spread(pv['p95'], f0)} | {spread(pv['p99'], f0)} | {spread(pv['p99.9'], f0)} | "
                         + " | ".join("–" if add[p] is None else f"{add[p]:+.0f}" for p in ("p50", "p99", "p99.9"))
                         + f" | {med([(x['send_lag_us'] or {}).get('p50') for x in cs])} | {sum(x['errors'] for x in cs)} | "
                         f"{max(max(x.get('core0_foreign_pct') or 0, x.get('core1_foreign_pct') or 0) for x in cs):.0f} |")
        L.append("")
    if tail:
        L.extend(tail_report(tail))
    if sc:
        L.append(f"## 4. Syscalls per request (`strace -c -f -p PID`, wrk -c64 for {STRACE_SECS} s)\n")
        L.append("strace slows every syscall, so these runs are for counts only. Requests are wrk's count in the "
                 "traced window; syscalls are all threads of the proxy process (nginx: its worker).\n")
        L.append("| target | syscalls per request | requests traced | top syscalls (calls, last run) |")
        L.append("|---|---|---|---|")
        for kd in PROXIES:
            cs = sc.get(kd, [])
            if cs:
                top = ", ".join(f"{n} {c}" for n, c in cs[-1]["top"])
                L.append(f"| {NAMES[kd]} | {spread([x['per_request'] for x in cs], f2)} | "
                         f"{spread([x['requests'] for x in cs], f0)} | {top} |")
        L.append("")
    if mem:
        L.append(f"## 5. Memory per idle connection ({mem['connections']} connections)\n")
        pd = mem.get("purge_delay", "0")
        L.append(f"Each run starts the proxy fresh, warms it with 20 requests on one connection, opens {mem.get('warm', 0)} "
                 "idle connections (each sends one request and reads its answer) and keeps them open, waits "
                 f"{IDLE_WAIT:.0f} s and reads its anonymous RSS (RssAnon; nginx: master + worker); then opens "
                 f"{mem['connections']} more such connections in {mem.get('steps', 1)} equal steps, reading RssAnon "
                 f"{IDLE_WAIT:.0f} s after each. *Bytes per idle connection* is the RssAnon added over all steps per "
                 "connection (what N idle connections cost, the growth of per-connection tables included); "
                 "*median step* is the median of the steps' bytes per connection (the cost of a connection between "
                 "the jumps of a table that doubles). Sampled connections are checked to be still open. mcplb runs with "
                 + (f"`MIMALLOC_PURGE_DELAY={pd}`" if pd != "" else "mimalloc's defaults")
                 + " (mimalloc v3 returns freed memory to the kernel only at a later allocation, by default at least 1 s "
                 "after the free: an idle process keeps what it freed last resident, and the allocations of new "
                 "connections purge it, so RSS can fall while connections open); *mcplb-lazy* is the same mcplb with "
                 "mimalloc's default delay. The kernel's socket memory is in no process's RSS.\n")
        L.append("| target | bytes per idle connection | median step, bytes per connection | "
                 "RssAnon before → after, KiB (last run) | steps, bytes per connection (last run) | alive (sampled) | non-200 |")
        L.append("|---|---|---|---|---|---|---|")
        for kd in MEM_TARGETS:
            cs = mem["cells"].get(kd, [])
            if cs:
                L.append(f"| {NAMES.get(kd, kd)} | {spread([x['per_conn_bytes'] for x in cs], f0)} | "
                         f"{spread([x.get('median_step_bytes', 0) for x in cs], f0)} | "
                         f"{cs[-1]['rss_before_kib']} → {cs[-1]['rss_after_kib']} | "
                         f"{' '.join(str(v) for v in cs[-1].get('step_bytes', []))} | "
                         f"{cs[-1]['alive_sampled']} | {sum(x['non_200'] for x in cs)} |")
        L.append("")
    if ses:
        L.append(f"## 6. Sessions held through mcplb ({ses['sessions']} concurrent MCP sessions)\n")
        L.append("Stateful mock backend (sessions on); each of the connections is a virtual user that runs "
                 "`initialize`, `notifications/initialized`, then `tools/call` with its `Mcp-Session-Id` "
                 "(mcplb-load session mode, 1 s warm-up).\n")
        L.append("| mode | req/s | p50 µs | p95 µs | p99 µs | errors (total) | error rate | proxy CPU % | core 1 % |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for mode, label in (("closed", "closed loop"), ("open", f"open loop at {ses['rate']}/s")):
            cs = ses["cells"][mode]
            L.append(f"| {label} | {spread([x['rps'] for x in cs], kf)} | {spread([x['latency_us']['p50'] for x in cs], f0)} | "
                     f"{spread([x['latency_us']['p95'] for x in cs], f0)} | {spread([x['latency_us']['p99'] for x in cs], f0)} | "
                     f"{sum(x['errors']['total'] for x in cs)} | {spread([x['error_rate_pct'] for x in cs], lambda v: f'{v:.3f}', ' %')} | "
                     f"{spread([x.get('proxy_cpu_pct') for x in cs], f0)} | {spread([x['core1_busy_pct'] for x in cs], f0)} |")
        L.append("")
    xc = RESULTS.get("xcheck")
    if xc:
        L.append("## Cross-check: nginx `return 200` as the backend (wrk, 64 connections)\n")
        L.append("The same proxies (fresh instances) in front of an nginx answering a fixed JSON-RPC body, so a "
                 "quirk of the mock backend cannot favour one proxy.\n")
        L.append("| target | req/s | proxy CPU µs/req | core 1 % | bottleneck | mcplb vs it (CPU µs/req) |")
        L.append("|---|---|---|---|---|---|")
        mc = med([x.get("cpu_us_per_req") for x in xc.get("mcplb", [])])
        for kd in TARGETS:
            cs = xc.get(kd, [])
            if cs:
                c = med([x.get("cpu_us_per_req") for x in cs])
                L.append(f"| {NAMES[kd]} | {spread([x['rps'] for x in cs], kf)} | {spread([x.get('cpu_us_per_req') for x in cs], f2)} | "
                         f"{spread([x['core1_busy_pct'] for x in cs], f0)} | {', '.join(sorted({x['bottleneck'].split(' (')[0] for x in cs}))} | "
                         f"{ratio_text(mc, c, False) if kd in ('nginx', 'haproxy') else '–'} |")
        L.append("")
    hs = RESULTS.get("https")
    if hs:
        L.append("## 8. HTTPS: the proxy terminates TLS (wrk over https, keep-alive)\n")
        L.append("Client -> TLS -> proxy -> plain HTTP -> the same mock backend. One ECDSA P-256 certificate "
                 "(made by the script with openssl) for all three; each proxy with its TLS defaults otherwise "
                 "(mcplb: rustls + ring; nginx and HAProxy: OpenSSL). wrk keeps its connections open, so "
                 "handshakes happen once per connection, at the start of a cell.\n")
        L.append("| proxy | negotiated (openssl s_client) |")
        L.append("|---|---|")
        for kd in PROXIES:
            ti = hs["tls"].get(kd, {})
            L.append(f"| {NAMES[kd]} | {ti.get('protocol')} {ti.get('cipher')}, ALPN {ti.get('alpn')} |")
        L.append("")
        L.append("| conns | target | req/s | proxy CPU µs/req | proxy CPU % | core 0 busy % | core 1 busy % | errors | bottleneck | foreign % core 0 / 1 |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for c in CONNS:
            for kd in PROXIES:
                cs = hs["cells"].get(f"wrk|{c}|{kd}", [])
                if cs:
                    L.append(f"| {c} | {NAMES[kd]} | " + closed_loop_cells(cs, foreign=True) + " |")
        L.append("")
        L.append("When other jobs take a large share of the cores (foreign %), req/s measures the machine's contention "
                 "more than the proxies; proxy CPU µs per request (the proxy process's own CPU time divided by the "
                 "requests it served) is the figure that still compares them.\n")
        L.append("| conns | figure | mcplb vs nginx | mcplb vs HAProxy |")
        L.append("|---|---|---|---|")
        for c in CONNS:
            get = lambda kd, f: med([x.get(f) for x in hs["cells"].get(f"wrk|{c}|{kd}", [])])
            for f, name, hib in (("rps", "req/s", True), ("cpu_us_per_req", "CPU µs/req", False)):
                L.append(f"| {c} | {name} | {ratio_text(get('mcplb', f), get('nginx', f), hib)} | "
                         f"{ratio_text(get('mcplb', f), get('haproxy', f), hib)} |")
        L.append("")
    if RESULTS.get("failed_phases"):
        L.append("## Phases that failed\n")
        L.extend(f"- {k}: `{v}`" for k, v in RESULTS["failed_phases"].items())
        L.append("")
    L.append("## Command\n")
    L.append(f"```\n{command}\n```\n")
    L.append(f"Raw data (every run, wrk output, strace summaries): `{os.path.basename(JSON_PATH)}`.\n")
    return "\n".join(L)


def rerender(json_path):
    """Writes the markdown again from a saved JSON (after a change to the report code)."""
    global JSON_PATH
    JSON_PATH = json_path
    with open(json_path) as f:
        d = json.load(f)
    RESULTS.update(d["results"])
    globals().update(d.get("settings", {}))  # the report prints the run's own settings
    if "latency" in RESULTS:
        RESULTS["latency"]["rates"] = [tuple(x) for x in RESULTS["latency"]["rates"]]
    text = report(d["facts"], d["command"], datetime.datetime.fromisoformat(d["started"]),
                  datetime.datetime.fromisoformat(d["finished"]), d["load_start"], d["load_end"])
    md = json_path[: -len(".json")] + ".md"
    with open(md, "w") as f:
        f.write(text)
    print(f"wrote {md}")


def main():
    global LUA, JSON_PATH
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return rerender(sys.argv[2])
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = datetime.datetime.now()
    date = started.strftime("%Y-%m-%d")
    os.makedirs(OUT, exist_ok=True)
    md_path = os.path.join(OUT, f"{date}-{RESULT_NAME}.md")
    JSON_PATH = os.path.join(OUT, f"{date}-{RESULT_NAME}.json")
    for p in [P_MOCK, P_MOCK_SESS, P_NGX_BACKEND, P_MCPLB_ADMIN, *[p for v in EXTRA_PORTS.values() for p in v]] + [v + d for v in PROXY_PORTS.values() for d in (0, 10, 20, 30)] \
            + list(HTTPS_PORTS.values()):
        if not port_free(p):
            sys.exit(f"port {p} is in use; set BASE_PORT to another base (now {BASE})")
    LUA = write_lua()
    facts = machine_facts()
    load_start = loadavg()
    command = os.environ.get("SBS_COMMAND", "bench/side_by_side.sh")
    log(f"work dir {RUNDIR}; results -> {md_path}")
    try:
        mock = start_mock(P_MOCK)
        targets = {"direct": mock}
        for kd in PROXIES:
            targets[kd] = start_proxy(kd, PROXY_PORTS[kd], P_MOCK, admin=P_MCPLB_ADMIN if kd == "mcplb" else None)
        RESULTS["mcplb_info"] = targets["mcplb"].info
        for kd, (port, admin) in EXTRA_PORTS.items():
            if kd in TAIL_TARGETS and "tail" in PHASES:
                targets[kd] = start_proxy(kd, port, P_MOCK, admin=admin)
        # answer size, and a check that every target answers the request
        for kd in targets:
            s = socket.create_connection(("127.0.0.1", targets[kd].port))
            s.sendall(one_request(targets[kd].port))
            st = read_answer(s)
            s.close()
            if st != 200:
                raise RuntimeError(f"{kd} answered {st} to the benchmark request")
        s = socket.create_connection(("127.0.0.1", P_MOCK))
        s.sendall(one_request(P_MOCK))
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        m = re.search(rb"(?i)content-length:\s*(\d+)", data)
        RESULTS["answer_bytes"] = int(m.group(1)) if m else None
        s.close()
        # warm every path once
        for kd in targets:
            run_wrk(targets[kd].url, 64, 1)
        def guarded(name, fn, *a):
            if name not in PHASES:
                return
            try:
                fn(*a)
            except Exception as e:  # noqa: BLE001 - one failed phase must not lose the others
                log(f"phase {name} failed: {e!r}")
                RESULTS.setdefault("failed_phases", {})[name] = repr(e)

        guarded("throughput", phase_throughput, targets)
        guarded("latency", phase_latency, targets)
        guarded("tail", phase_tail, targets)
        guarded("syscalls", phase_syscalls, targets)
        for kd in targets:
            if kd != "direct":
                targets[kd].stop()
        guarded("https", phase_https, P_MOCK)
        guarded("agreement", phase_agreement, mock)
        guarded("memory", phase_memory, P_MOCK)
        guarded("sessions", phase_sessions)
        mock.stop()
        if XCHECK:
            guarded("xcheck", phase_xcheck)
    finally:
        stop_all()
    finished = datetime.datetime.now()
    load_end = loadavg()
    with open(JSON_PATH, "w") as f:
        json.dump({"facts": facts, "command": command, "started": started.isoformat(), "finished": finished.isoformat(),
                   "load_start": load_start, "load_end": load_end,
                   "settings": {"DURATION": DURATION, "LAT_DURATION": LAT_DURATION, "RUNS": RUNS, "CONNS": CONNS,
                                "LAT_CONNS": LAT_CONNS, "FIXED_RATE": FIXED_RATE, "TAIL_CONNS": TAIL_CONNS,
                                "TAIL_RATE": TAIL_RATE, "TAIL_DURATION": TAIL_DURATION, "TAIL_TARGETS": TAIL_TARGETS, "STRACE_SECS": STRACE_SECS,
                                "IDLE_CONNS": IDLE_CONNS, "IDLE_WAIT": IDLE_WAIT,
                                "IDLE_WARM": IDLE_WARM, "IDLE_STEPS": IDLE_STEPS, "MEM_TARGETS": MEM_TARGETS, "MEM_PURGE_DELAY": MEM_PURGE_DELAY,
                                "SESSIONS": SESSIONS, "SESSION_RATE": SESSION_RATE},
                   "request_body": WRK_BODY, "results": RESULTS}, f, indent=1)
    text = report(facts, command, started, finished, load_start, load_end)
    with open(md_path, "w") as f:
        f.write(text)
    print(text)
    log(f"wrote {md_path} and {JSON_PATH} in {(finished - started).total_seconds() / 60:.1f} min")


JSON_PATH = None

if __name__ == "__main__":
    main()
