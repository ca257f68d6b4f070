#!/usr/bin/env bash
# The audit trail's cost on its writer thread: CPU per line of the `mcplb-access-log` thread
# (which appends the per-core buffers to the file), bytes per line, and the worker's CPU per
# request, for one or more builds in turn (same run: read the ratios, not the absolute
# figures, on a busy machine).
#
#   bench/audit_writer.sh BIN[:EXTRA.toml] [BIN[:EXTRA.toml] ...]
#
# Each build: one worker pinned to core 0 in front of the stateless mock (core 1), EXTRA
# appended to its config (default bench/conf/policy/on.toml: 100 rules and the audit trail,
# @RUN@ the run's directory); wrk (core 1, CONNS connections, bench/quick/post.lua) loads it
# for SECS seconds after a warm-up, ROUNDS times, the builds taking turns. Per round and
# thread, CPU time is read from /proc/PID/task/TID/schedstat (ns on CPU, user and kernel:
# exact, where /proc/.../stat counts 10 ms ticks) before and after. Prints per round:
# requests, audit lines written, bytes per line, writer ns per line, worker ns per request,
# the writer's minor page faults per 1000 lines and the worker's per 1000 requests.
# Settings (env): SECS (5), ROUNDS (3), CONNS (64), LOAD_BIN (mcplb-load for the mock).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
SECS=${SECS:-5}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-64}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/mcplb-load}
RUN=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
MOCK_PORT=$(free_port)
taskset -c 1 "$LOAD_BIN" mock --listen "127.0.0.1:$MOCK_PORT" --stateless --threads 1 >"$RUN/mock.log" 2>&1 &
pids+=($!)

names=(); ports=(); procs=(); logs=()
i=0
for spec in "$@"; do
    [[ $spec == *:* ]] || spec="$spec:$ROOT/bench/conf/policy/on.toml"
    split_spec "$spec"
    port=$(free_port)
    mkdir -p "$RUN/$i"
    mcplb_toml "$port" "$MOCK_PORT" 1 "max_connections_per_ip = 100000" >"$RUN/$i/p.toml"
    sed "s|@RUN@|$RUN/$i|g" "$SPEC_EXTRA" >>"$RUN/$i/p.toml"
    taskset -c 0 "$SPEC_BIN" run --config "$RUN/$i/p.toml" >"$RUN/$i/p.log" 2>&1 &
    pids+=($!); procs+=($!); ports+=("$port"); names+=("$spec"); logs+=("$RUN/$i/audit.jsonl")
    for _ in $(seq 200); do grep -q "mcplb started" "$RUN/$i/p.log" 2>/dev/null && break; sleep 0.05; done
    i=$((i + 1))
done

# thread_ns PID NAME: ns on CPU of PID's threads whose name (15 characters at most) starts with NAME, summed.
thread_ns() {
    local t sum=0
    for t in /proc/"$1"/task/*; do
        if [[ $(cat "$t/comm") == "$2"* ]]; then sum=$((sum + $(cut -d' ' -f1 "$t/schedstat"))); fi
    done
    echo "$sum"
}
# thread_faults PID NAME: minor page faults of PID's threads whose name starts with NAME.
thread_faults() {
    local t sum=0
    for t in /proc/"$1"/task/*; do
        if [[ $(cat "$t/comm") == "$2"* ]]; then sum=$((sum + $(awk '{print $10}' "$t/stat"))); fi
    done
    echo "$sum"
}
lines_bytes() { if [[ -f $1 ]]; then wc -lc <"$1" | awk '{print $1, $2}'; else echo "0 0"; fi; }

for n in "${!procs[@]}"; do # warm-up
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$ROOT/bench/quick/post.lua" "http://127.0.0.1:${ports[$n]}/mcp" >/dev/null
done
sleep 0.5
printf '%-40s %5s %9s %9s %7s %11s %11s %12s %12s\n' build round requests lines B/line writer_ns/l worker_ns/r w_faults/kl k_faults/kr
for r in $(seq "$ROUNDS"); do
    for n in "${!procs[@]}"; do
        pid=${procs[$n]}
        read -r l0 b0 < <(lines_bytes "${logs[$n]}")
        w0=$(thread_ns "$pid" mcplb-access); k0=$(thread_ns "$pid" mcplb-worker)
        wf0=$(thread_faults "$pid" mcplb-access); kf0=$(thread_faults "$pid" mcplb-worker)
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$ROOT/bench/quick/post.lua" "http://127.0.0.1:${ports[$n]}/mcp")
        sleep 0.6 # the last buffers (handed every 250 ms)
        w1=$(thread_ns "$pid" mcplb-access); k1=$(thread_ns "$pid" mcplb-worker)
        wf1=$(thread_faults "$pid" mcplb-access); kf1=$(thread_faults "$pid" mcplb-worker)
        read -r l1 b1 < <(lines_bytes "${logs[$n]}")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        lines=$((l1 - l0)); bytes=$((b1 - b0))
        awk -v s="$(basename "${names[$n]%%:*}"):$(basename "${names[$n]#*:}")" -v r="$r" -v q="$reqs" -v l="$lines" -v b="$bytes" -v w=$((w1 - w0)) -v k=$((k1 - k0)) \
            -v wf=$((wf1 - wf0)) -v kf=$((kf1 - kf0)) \
            'BEGIN { printf "%-40s %5d %9d %9d %7.1f %11.1f %11.1f %12.2f %12.2f\n", s, r, q, l, (l ? b / l : 0), (l ? w / l : 0), k / q, (l ? 1000 * wf / l : 0), 1000 * kf / q }'
    done
done
