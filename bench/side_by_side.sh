#!/usr/bin/env bash
# The side-by-side benchmark of BENCHMARKING.md: mcplb vs nginx vs HAProxy vs direct, on one
# machine with 2+ cores (proxy on core 0, backend + load generator on core 1), loopback only.
#
#   bench/side_by_side.sh            # full matrix, writes bench/results/<date>-side-by-side.{md,json}
#   DURATION=3 RUNS=1 bench/side_by_side.sh     # a quick look
#
# Settings (environment): DURATION (s per closed-loop cell, 10), LAT_DURATION (s per open-loop
# cell, = DURATION), RUNS (3), CONNS ("64 256"), LAT_CONNS (256), FIXED_RATE (10000),
# STRACE_SECS (3), IDLE_CONNS (10000), SESSIONS (1000), SESSION_RATE (10000), XCHECK (1),
# PHASES ("throughput latency syscalls https agreement memory sessions xcheck"), BASE_PORT
# (27000), OUT, RESULT_NAME (side-by-side: the results' file name after the date),
# LOAD_MAX (1.0) and LOAD_WAIT (600): wait up to LOAD_WAIT s for the 1-min load average to
# drop below LOAD_MAX before starting (the result file records the load either way);
# NO_BUILD=1 skips `cargo build`; NO_INSTALL=1 never calls apt-get.
# See bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="bench/side_by_side.sh"
for v in DURATION LAT_DURATION RUNS CONNS LAT_CONNS FIXED_RATE STRACE_SECS IDLE_CONNS IDLE_WAIT \
         SESSIONS SESSION_RATE XCHECK PHASES BASE_PORT OUT RESULT_NAME LOAD_MAX LOAD_WAIT NO_BUILD; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done

say() { echo "[side-by-side] $*" >&2; }

# ---- tools: nginx, haproxy, wrk, strace, taskset (Debian/Ubuntu packages)
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v strace >/dev/null || need+=(strace)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    if [ -n "${NO_INSTALL:-}" ]; then say "missing: ${need[*]} (NO_INSTALL set)"; exit 1; fi
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    say "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# Debian's packages start the services; the benchmark runs its own instances only.
# (It does not stop system services: it uses its own ports, BASE_PORT+1.., and fails if one is taken.)

if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load on core 1)"; exit 1; fi

# ---- binaries
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load)
fi
for b in target/release/mcplb target/release/mcplb-load; do
    [ -x "$b" ] || { say "missing $b (build with: cargo build --release -p mcplb -p mcplb-load)"; exit 1; }
done

# ---- file descriptors: 10 000 idle connections need more than the usual 1024
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "${IDLE_CONNS:-10000}" ]; then
    say "warning: open-file limit $(ulimit -n) is below IDLE_CONNS=${IDLE_CONNS:-10000}; the memory figure uses fewer connections"
fi

# ---- a quiet machine
LOAD_MAX=${LOAD_MAX:-1.0}
LOAD_WAIT=${LOAD_WAIT:-600}
waited=0
while awk -v m="$LOAD_MAX" '{ exit !($1 >= m) }' /proc/loadavg && [ "$waited" -lt "$LOAD_WAIT" ]; do
    [ $((waited % 60)) -eq 0 ] && say "load average $(cut -d' ' -f1-3 /proc/loadavg) >= $LOAD_MAX; waiting (up to ${LOAD_WAIT}s)"
    sleep 10; waited=$((waited + 10))
done
say "load average $(cut -d' ' -f1-3 /proc/loadavg); starting"

# ---- run (the orchestrator stops every process it started, by PID, on exit)
PY=""
cleanup() { if [ -n "$PY" ] && kill -0 "$PY" 2>/dev/null; then kill -TERM "$PY" 2>/dev/null; wait "$PY" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# The orchestrator itself sits on core 1 with the load; it starts the proxies on core 0.
SBS_COMMAND="$COMMAND" taskset -c 1 python3 "$ROOT/bench/side_by_side.py" &
PY=$!
wait "$PY"
rc=$?
PY=""
exit $rc
