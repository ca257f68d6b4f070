#!/usr/bin/env bash
# Same-run A/B of two mcplb builds: did a change cost CPU per request or tail latency?
#
#   bench/ab.sh BIN_A BIN_B            # e.g. the branch's release build against main's
#   bench/ab.sh BIN:off.toml BIN:on.toml   # one build, a feature off and on: each EXTRA.toml
#                                          # is appended to that proxy's config (@RUN@: the run's
#                                          # temporary directory)
#
# Both builds run at once, each one worker pinned to core 0, in front of the same mock MCP
# backend (`mcplb-load mock --stateless --threads 1`, core 1). wrk (core 1, one thread,
# CONNS connections, the 200-byte `tools/call` of bench/quick/post.lua) loads A and B in turn,
# A B, B A, A B ... (the order alternates) PAIRS pairs after one warm-up each, SECS seconds a
# run. Per run: req/s, the
# proxy's CPU µs per request (utime+stime from /proc/PID/stat over the run, divided by the
# requests) and wrk's p50/p99 latency. Writes bench/results/<date>-ab-TAG.md with every run,
# the medians, the pairwise B/A ratios, machine facts and the command. Settings (env): PAIRS
# (7), SECS (6), CONNS (64), TAG (ab), OUT (bench/results), LOAD_BIN (mcplb-load to use for
# the mock; default target/release/mcplb-load), MODE (`stateless`, the default, or
# `session-auth`: a group with an API key in front of the stateful mock, every request a
# `tools/call` in one session opened through each proxy, with the key: the path that opens
# the sealed session id and checks its owner; bench/quick/post_session.lua; or `era`: the
# cost of the era bridge, usually with A = B = one build: the stateful (2025-era) mock, the
# 2026-07-28 `tools/call` of post_modern.lua (full `_meta`), A's group with `era = "2026"` (the
# request passes as it is: the plain path) and B's with `era = "2025"` (bridged through a
# backend session); ERA_A / ERA_B change those, e.g. ERA_A=2025 to compare two builds' bridge),
# EXTRA_A and EXTRA_B (TOML appended to A's or B's config: the same build
# with a feature off and on), SCRIPT (another wrk script of bench/quick/ than the mode's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
split_spec "$1"; A=$SPEC_BIN; FILE_A=$SPEC_EXTRA
split_spec "$2"; B=$SPEC_BIN; FILE_B=$SPEC_EXTRA
PAIRS=${PAIRS:-7}; SECS=${SECS:-6}; CONNS=${CONNS:-64}; TAG=${TAG:-ab}; MODE=${MODE:-stateless}
OUT=${OUT:-$ROOT/bench/results}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/mcplb-load}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
[[ -x $LOAD_BIN ]] || { echo "needs $LOAD_BIN (cargo build --release -p mcplb-load)"; exit 2; }

RUN=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT

MOCK_PORT=$(free_port)
case $MODE in
    stateless) MOCK_MODE=(--stateless); LUA=post.lua; AUTH="" ;;
    era) MOCK_MODE=(); LUA=post_modern.lua; AUTH="" ;;
    session-auth)
        MOCK_MODE=(); LUA=post_session.lua
        API_KEY=ab-bench-key
        AUTH=$(printf '[servers.auth]\napi_keys = ["sha256:%s"]' "$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)") ;;
    *) echo "MODE must be stateless, session-auth or era"; exit 2 ;;
esac
# SCRIPT: another request script of bench/quick/ (e.g. post_list.lua: bench/cache.sh).
if [[ -n ${SCRIPT:-} ]]; then LUA=$SCRIPT; fi
taskset -c 1 "$LOAD_BIN" mock --listen "127.0.0.1:$MOCK_PORT" "${MOCK_MODE[@]}" --threads 1 >"$RUN/mock.log" 2>&1 &
pids+=($!)

start_proxy() { # bin name [extra TOML] [extra file] -> sets PID and PORT (no subshell: its PID must reach cleanup)
    local bin=$1 name=$2 extra=${3:-} file=${4:-} port era=""
    port=$(free_port)
    if [[ $MODE == era ]]; then
        if [[ $name == a ]]; then era="era = \"${ERA_A:-2026}\""; else era="era = \"${ERA_B:-2025}\""; fi
    fi
    mcplb_toml "$port" "$MOCK_PORT" 1 "max_connections_per_ip = 100000" "$era" "$AUTH
$extra" >"$RUN/$name.toml"
    if [[ -n $file ]]; then sed "s|@RUN@|$RUN|g" "$file" >>"$RUN/$name.toml"; fi
    taskset -c 0 "$bin" run --config "$RUN/$name.toml" >"$RUN/$name.log" 2>&1 &
    PID=$!
    PORT=$port
    pids+=("$PID")
    for _ in $(seq 200); do grep -q "mcplb started" "$RUN/$name.log" 2>/dev/null && break; sleep 0.05; done
}
start_proxy "$A" a "${EXTRA_A:-}" "$FILE_A"; PID_A=$PID; PORT_A=$PORT
start_proxy "$B" b "${EXTRA_B:-}" "$FILE_B"; PID_B=$PID; PORT_B=$PORT
sleep 0.5

open_session() { # port -> prints the session id opened through that proxy
    local url="http://127.0.0.1:$1/mcp" sid
    sid=$(curl -s -D - -o /dev/null -H "x-api-key: $API_KEY" -H 'content-type: application/json' \
        -H 'accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"ab","version":"0"}}}' \
        "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}')
    [[ -n $sid ]] || { echo "no session from $url" >&2; exit 1; }
    curl -s -o /dev/null -H "x-api-key: $API_KEY" -H "mcp-session-id: $sid" -H 'content-type: application/json' \
        -H 'accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$url"
    echo "$sid"
}
if [[ $MODE == session-auth ]]; then SID_A=$(open_session "$PORT_A"); SID_B=$(open_session "$PORT_B"); fi

one_run() { # pid port [session] -> "rps cpu_us p50_ms p99_ms"
    local pid=$1 port=$2 t0 t1 out
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(MCP_SESSION=${3:-} API_KEY=${API_KEY:-} taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$ROOT/bench/quick/$LUA" "http://127.0.0.1:$port/mcp")
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    python3 - "$t0" "$t1" "$(getconf CLK_TCK)" <<PY
import re, sys
out = """$out"""
t0, t1, hz = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
reqs = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
def lat(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)\b" % p, out)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
errs = "errors" if re.search(r"Non-2xx|Socket errors", out) else ""
share = (t1 - t0) / hz / $SECS
print(f"{rps:.0f} {(t1 - t0) / hz * 1e6 / reqs:.2f} {lat(50):.3f} {lat(99):.3f} {share:.2f} {errs}")
PY
}

# Warm-up (not counted).
one_run "$PID_A" "$PORT_A" "${SID_A:-}" >/dev/null
one_run "$PID_B" "$PORT_B" "${SID_B:-}" >/dev/null
rows=()
for i in $(seq "$PAIRS"); do
    # The order alternates within pairs (A B, then B A). The same binary as A and B still read
    # B/A 1.007-1.084 over 6 pairs (bench/results/2026-12-07-session8-end.md): for a difference
    # of a few percent, run it again with A and B swapped, and count instructions.
    if ((i % 2)); then
        ra=$(one_run "$PID_A" "$PORT_A" "${SID_A:-}"); rb=$(one_run "$PID_B" "$PORT_B" "${SID_B:-}")
    else
        rb=$(one_run "$PID_B" "$PORT_B" "${SID_B:-}"); ra=$(one_run "$PID_A" "$PORT_A" "${SID_A:-}")
    fi
    echo "pair $i: A $ra | B $rb"
    rows+=("$ra|$rb")
done

mkdir -p "$OUT"
file="$OUT/$(date +%F)-ab-$TAG.md"
python3 - "$file" "$A${FILE_A:+ + $(basename "$FILE_A")}" "$B${FILE_B:+ + $(basename "$FILE_B")}" "$PAIRS" "$SECS" "$CONNS" "$MODE" "${rows[@]}" <<'PY'
import statistics as st, subprocess, sys, os
file, a, b, pairs, secs, conns, mode, *rows = sys.argv[1:]
A = [list(map(float, r.split("|")[0].split()[:5])) for r in rows]
B = [list(map(float, r.split("|")[1].split()[:5])) for r in rows]
med = lambda xs: st.median(xs)
ratio = lambda i: [y[i] / x[i] for x, y in zip(A, B)]
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return "?"
NPROC, KERNEL = sh("nproc"), sh("uname -r")
LOAD = " ".join(open("/proc/loadavg").read().split()[:3])
WRK = sh("wrk -v 2>&1 | head -1")
lines = [
    f"# Same-run A/B: CPU per request and latency ({os.path.basename(file)[:-3]})", "",
    f"- A: `{a}`", f"- B: `{b}`",
    *[f"- {k[-1]}'s config adds: `{' '.join(os.environ[k].split())}`"
      for k in ("EXTRA_A", "EXTRA_B") if os.environ.get(k)],
    (f"- Method: `bench/ab.sh` — both proxies up at once, one worker each pinned to core 0; the "
     f"stateless mock (`mcplb-load mock --threads 1`) and wrk (`-t1 -c{conns} -d{secs}s --latency`, "
     + ("the 200-byte `tools/call` of `bench/quick/post.lua`" if not os.environ.get("SCRIPT")
        else f"the requests of `bench/quick/{os.environ['SCRIPT']}`")
     + f") on core 1; A B A B ..., {pairs} pairs "
     "after one warm-up each. CPU = the proxy's utime+stime over the run / requests.")
    if mode == "stateless" else
    (f"- Method: `MODE=era bench/ab.sh` — both proxies up at once, one worker each pinned to core 0; "
     f"the stateful (2025-era) mock (`mcplb-load mock --threads 1`) and wrk (`-t1 -c{conns} -d{secs}s "
     f"--latency`, the 2026-07-28 `tools/call` of `bench/quick/post_modern.lua` with its full `_meta`) on core 1; "
     + "; ".join(f"{side}'s group `era = \"{v}\"` ({'passed as it is' if v == '2026' else 'bridged through a backend session'})"
                 for side, v in (("A", os.environ.get("ERA_A", "2026")), ("B", os.environ.get("ERA_B", "2025"))))
     + "; "
     f"A B A B ..., {pairs} pairs after one warm-up each. CPU = the proxy's utime+stime over the run / requests.")
    if mode == "era" else
    (f"- Method: `MODE=session-auth bench/ab.sh` — both proxies up at once, one worker each pinned "
     f"to core 0, a group requiring an API key; the stateful mock (`mcplb-load mock --threads 1`) "
     f"and wrk (`-t1 -c{conns} -d{secs}s --latency`, `bench/quick/post_session.lua`: a `tools/call` "
     f"with `X-Api-Key` in one session opened through each proxy) on core 1; A B A B ..., {pairs} "
     "pairs after one warm-up each. CPU = the proxy's utime+stime over the run / requests."),
    f"- Machine: {NPROC} cores, {KERNEL}, load average at the end {LOAD}; {WRK}", "",
    "| run | A req/s | A CPU µs/req | A p50 ms | A p99 ms | B req/s | B CPU µs/req | B p50 ms | B p99 ms |",
    "|---|---|---|---|---|---|---|---|---|",
]
for i, (x, y) in enumerate(zip(A, B), 1):
    lines.append(f"| {i} | {x[0]:.0f} | {x[1]:.2f} | {x[2]:.3f} | {x[3]:.3f} | {y[0]:.0f} | {y[1]:.2f} | {y[2]:.3f} | {y[3]:.3f} |")
lines += ["", "| figure | A median | B median | B/A median of pairs [min–max] |", "|---|---|---|---|"]
for i, name in enumerate(["req/s", "CPU µs per request", "p50 ms", "p99 ms"]):
    r = ratio(i)
    lines.append(f"| {name} | {med([x[i] for x in A]):.3f} | {med([y[i] for y in B]):.3f} | {med(r):.3f} [{min(r):.3f}–{max(r):.3f}] |")
share = med([x[4] for x in A] + [y[4] for y in B])
lines += ["", f"The proxy under test used a median {share:.0%} of core 0 during its runs "
          + ("(the proxy was the bottleneck)." if share > 0.9 else
             "(below saturation: core 1, where wrk and the mock share a core, limited the load; "
             "CPU per request is still comparable, req/s less so)."), ""]
open(file, "w").write("\n".join(lines))
print("\n".join(lines))
PY
echo "wrote $file"
