#!/usr/bin/env bash
# A profile of one mcplb worker under saturated load, and of one nginx worker in the same run:
# where the CPU per proxied request goes (issue 18).
#
#   bench/profile.sh [MCPLB_BIN]       # default target/release/mcplb
#
# The mock MCP backend (`mcplb-load mock --stateless --threads 1`) and wrk (one thread, CONNS
# connections, bench/quick/post.lua) run on core 1; mcplb (workers = 1) and nginx
# (bench/conf/nginx.conf.tmpl, one worker) on core 0, loaded in turn. Per proxy: requests,
# utime and stime over the loaded window (CPU µs per request, user/kernel split), and a
# `perf record -e cpu-clock --call-graph dwarf` of the worker for REC seconds inside it.
# Prints the summaries and keeps perf's data and reports in OUT_DIR. Settings (env): SECS
# (wrk seconds, 14), REC (perf seconds, 8), CONNS (64), FREQ (perf Hz, 1999), OUT_DIR
# (a new temporary directory), LOAD_BIN (target/release/mcplb-load), LOADGEN (wrk, or mcplb-load:
# `mcplb-load run --threads 1 --stateless` with the same call, which drives a proxy on core 0 to
# saturation where wrk and the mock together on core 1 cannot), RATE (with LOADGEN=mcplb-load:
# open loop at RATE req/s over CONNS connections instead of saturation, e.g. issue 18's tail
# cell: RATE=10000 CONNS=1000). Besides CPU, the worker's context switches per request (its
# process's threads: voluntary ones are wake-ups, involuntary ones preemptions): a
# wake-up-bound regime shows there. SCHED (seconds of `perf sched record -a` after the profile,
# while the load still runs; all cores, as a wake-up is traced on the waker's core; SECS must
# cover 3 + REC + SCHED): per proxy, its runs per request (switch-in to switch-out) and how many
# ended asleep, the median run time and its scheduling delay (wake-up to running), from
# `perf sched timehist --state`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MCPLB=${1:-$ROOT/target/release/mcplb}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/mcplb-load}
SECS=${SECS:-14}; REC=${REC:-8}; CONNS=${CONNS:-64}; FREQ=${FREQ:-1999}; LOADGEN=${LOADGEN:-wrk}; RATE=${RATE:-}; SCHED=${SCHED:-}
[[ $LOADGEN == wrk || $LOADGEN == mcplb-load ]] || { echo "LOADGEN is wrk or mcplb-load"; exit 2; }
[[ -z $RATE || $LOADGEN == mcplb-load ]] || { echo "RATE needs LOADGEN=mcplb-load"; exit 2; }
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/mcplb-profile.XXXXXX)}
mkdir -p "$OUT_DIR"
for t in perf wrk nginx taskset; do command -v $t >/dev/null || { echo "needs $t"; exit 2; }; done
[[ -x $MCPLB && -x $LOAD_BIN ]] || { echo "needs $MCPLB and $LOAD_BIN (cargo build --release -p mcplb -p mcplb-load)"; exit 2; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }

MOCK=$(free_port)
taskset -c 1 "$LOAD_BIN" mock --listen "127.0.0.1:$MOCK" --stateless --threads 1 >"$OUT_DIR/mock.log" 2>&1 &
pids+=($!)
wait_port "$MOCK"

P_MCPLB=$(free_port)
mcplb_toml "$P_MCPLB" "$MOCK" 1 "max_connections_per_ip = 100000" >"$OUT_DIR/mcplb.toml"
taskset -c 0 "$MCPLB" run --config "$OUT_DIR/mcplb.toml" >"$OUT_DIR/mcplb.log" 2>&1 &
pids+=($!); PID_MCPLB=$!
wait_port "$P_MCPLB"

P_NGINX=$(free_port)
mkdir -p "$OUT_DIR/nginx-$P_NGINX-body" "$OUT_DIR/nginx-$P_NGINX-proxy"
sed -e "s|\${RUNDIR}|$OUT_DIR|g" -e "s|\${LISTEN}|$P_NGINX|g" -e "s|\${BACKEND}|$MOCK|g" \
    bench/conf/nginx.conf.tmpl >"$OUT_DIR/nginx.conf"
taskset -c 0 nginx -p "$OUT_DIR" -e "$OUT_DIR/nginx-startup.log" -c "$OUT_DIR/nginx.conf" &
pids+=($!); NGINX_MASTER=$!
wait_port "$P_NGINX"
sleep 0.3
PID_NGINX=$(pgrep -P "$NGINX_MASTER" | head -1)
[[ -n $PID_NGINX ]] || { echo "no nginx worker"; exit 1; }

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# Context switches of all the process's threads: voluntary (it slept: each is a wake-up) and
# involuntary (preempted: another task wanted the core).
switches() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v, n}'; }
# The load for SECS seconds ($1) against port $2; prints wrk's report or mcplb-load's JSON.
load() {
    if [[ $LOADGEN == wrk ]]; then
        taskset -c 1 wrk -t1 -c"$CONNS" -d"$1s" -s bench/quick/post.lua "http://127.0.0.1:$2/mcp"
    else
        taskset -c 1 "$LOAD_BIN" run --url "http://127.0.0.1:$2/mcp" --connections "$CONNS" --threads 1 \
            --duration "$1s" --stateless --args '{"query":"what is the weather in Paris today","limit":10}' --json --quiet \
            ${RATE:+--rate "$RATE"}
    fi
}
one() { # name pid port
    local name=$1 pid=$2 port=$3 u0 s0 u1 s1 v0 n0 v1 n1
    load 2 "$port" >/dev/null
    read -r u0 s0 < <(ticks "$pid")
    read -r v0 n0 < <(switches "$pid")
    load "$SECS" "$port" >"$OUT_DIR/$name.wrk" &
    local wrk=$!
    sleep 3
    perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$pid" -o "$OUT_DIR/$name.perf.data" -- sleep "$REC" 2>"$OUT_DIR/$name.perf.log" || true
    if [[ -n $SCHED ]]; then
        perf sched record -q -a -o "$OUT_DIR/$name.sched.data" -- sleep "$SCHED" 2>>"$OUT_DIR/$name.perf.log" || true
    fi
    wait "$wrk"
    read -r u1 s1 < <(ticks "$pid")
    read -r v1 n1 < <(switches "$pid")
    python3 - "$name" "$u0" "$s0" "$u1" "$s1" "$(getconf CLK_TCK)" "$OUT_DIR/$name.wrk" "$((v1 - v0))" "$((n1 - n0))" <<'PY'
import json, re, sys
name, u0, s0, u1, s1, hz, wrk = sys.argv[1], *map(float, sys.argv[2:7]), sys.argv[7]
vol, invol = int(sys.argv[8]), int(sys.argv[9])
out = open(wrk).read()
if "requests in" in out:
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
else:  # mcplb-load's JSON line
    j = json.loads(out.strip().splitlines()[-1])
    reqs, rps = j["exchanges"], j["throughput_rps"]  # written over the whole run, warm-up included
u, s = (u1 - u0) / hz, (s1 - s0) / hz
print(f"{name}: {reqs} requests ({rps:.0f}/s); CPU {1e6 * (u + s) / reqs:.2f} µs/request: "
      f"user {1e6 * u / reqs:.2f} ({100 * u / (u + s):.0f} %), kernel {1e6 * s / reqs:.2f} ({100 * s / (u + s):.0f} %); "
      f"context switches per request: {vol / reqs:.2f} voluntary (wake-ups), {invol / reqs:.2f} involuntary (preempted)")
PY
    perf report -i "$OUT_DIR/$name.perf.data" --stdio --no-children --sort dso -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -12 >"$OUT_DIR/$name.dso.txt" || true
    perf report -i "$OUT_DIR/$name.perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -60 >"$OUT_DIR/$name.self.txt" || true
    perf report -i "$OUT_DIR/$name.perf.data" --stdio --children --sort sym -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -80 >"$OUT_DIR/$name.children.txt" || true
    perf script -i "$OUT_DIR/$name.perf.data" -F ip,sym,dso 2>/dev/null \
        | python3 bench/profile_groups.py "$name" >"$OUT_DIR/$name.groups.txt" || true
    if [[ -n $SCHED ]]; then
        perf sched timehist --state -i "$OUT_DIR/$name.sched.data" -p "$pid" 2>/dev/null >"$OUT_DIR/$name.timehist.txt" || true
        python3 - "$name" "$OUT_DIR/$name.timehist.txt" "$SCHED" "$OUT_DIR/$name.wrk" <<'PY' | tee "$OUT_DIR/$name.sched.txt"
import json, re, statistics, sys
name, path, secs, wrk = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
out = open(wrk).read()
if "requests in" in out:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
else:
    rps = json.loads(out.strip().splitlines()[-1])["throughput_rps"]
# time [cpu] task[tid/pid] wait-time sch-delay run-time (ms) state
row = re.compile(r"^\s*[\d.]+\s+\[\d+\]\s+.*?\[\d+(?:/\d+)?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s*$")
delay, run, slept = [], [], 0
for line in open(path):
    m = row.match(line)
    if m:
        delay.append(1000 * float(m.group(2)))
        run.append(1000 * float(m.group(3)))
        slept += m.group(4).startswith(("S", "D", "I"))
if run:
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    n = rps * secs
    print(f"{name}: {len(run)} runs in {secs:.0f} s = {len(run) / n:.2f} per request, {slept / n:.2f} of them ended "
          f"asleep; run time median {statistics.median(run):.1f} µs, mean {statistics.fmean(run):.1f}, "
          f"p90 {q(run, 0.9):.1f}; scheduling delay (wake-up to running) median {statistics.median(delay):.1f} µs, "
          f"p90 {q(delay, 0.9):.1f}, p99 {q(delay, 0.99):.1f}")
else:
    print(f"{name}: no runs traced")
PY
    fi
    echo "-- $name: samples by object"; cat "$OUT_DIR/$name.dso.txt"
    echo "-- $name: user-space samples by group (bench/profile_groups.py)"; cat "$OUT_DIR/$name.groups.txt"
    echo "-- $name: top frames by own samples"; head -40 "$OUT_DIR/$name.self.txt" || true
}
one mcplb "$PID_MCPLB" "$P_MCPLB"
one nginx "$PID_NGINX" "$P_NGINX"
echo "data and reports in $OUT_DIR"
