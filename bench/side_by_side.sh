#!/usr/bin/env bash
# The side-by-side benchmark of BENCHMARKING.md: mcplb vs nginx vs HAProxy vs direct, on one
# machine with 2+ cores (proxy on core 0, backend + load generator on core 1), loopback only.
#
#   bench/side_by_side.sh            # full matrix, writes bench/results/<date>-side-by-side.{md,json}
#   DURATION=3 RUNS=1 bench/side_by_side.sh     # a quick look
#
# Settings (environment): DURATION (s per closed-loop cell, 10), LAT_DURATION (s per open-loop
# cell, = DURATION), RUNS (3), CONNS ("64 256"), LAT_CONNS (256), FIXED_RATE (10000),
# TAIL_CONNS (1000), TAIL_RATE (10000), TAIL_DURATION (= LAT_DURATION): the tail phase's
# open-loop cell (issue 18: p99/p99.9/max of every target, mcplb's loop gaps), STRACE_SECS (3), IDLE_CONNS (10000), IDLE_WARM (1000), IDLE_STEPS (10), MEM_TARGETS, MEM_PURGE_DELAY (0: see side_by_side.py), SESSIONS (1000), SESSION_RATE (10000), XCHECK (1),
# PHASES ("throughput latency tail syscalls https agreement memory sessions xcheck";
# `PHASES=tail` runs the tail cell alone), BASE_PORT
# (27000), OUT, RESULT_NAME (side-by-side: the results' file name after the date), MCPLB (the
# mcplb binary, default target/release/mcplb), MCPLB_B (a second build beside it in the tail
# phase: a same-run A/B), MCPLB_C (a third), TAIL_TARGETS, TAIL_SPIN (cores kept busy at SCHED_IDLE in the tail
# phase: is the tail an idle vCPU's wake-up?), LOAD_BIN (default target/release/mcplb-load),
# LOAD_MAX (1.0) and LOAD_WAIT (600): wait up to LOAD_WAIT s for the 1-min load average to
# drop below LOAD_MAX before starting (the result file records the load either way);
# NO_BUILD=1 skips `cargo build`; NO_INSTALL=1 never calls apt-get.
# See bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="bench/side_by_side.sh"
for v in DURATION LAT_DURATION RUNS CONNS LAT_CONNS FIXED_RATE TAIL_CONNS TAIL_RATE TAIL_DURATION STRACE_SECS IDLE_CONNS IDLE_WAIT IDLE_WARM IDLE_STEPS MEM_TARGETS MEM_PURGE_DELAY \
         SESSIONS SESSION_RATE XCHECK PHASES BASE_PORT OUT RESULT_NAME LOAD_MAX LOAD_WAIT NO_BUILD \
         MCPLB MCPLB_B MCPLB_C TAIL_TARGETS TAIL_SPIN LOAD_BIN; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done

SAY_TAG=side-by-side
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

# ---- tools: nginx, haproxy, wrk, strace, taskset (Debian/Ubuntu packages)
install_missing nginx:nginx-light haproxy:haproxy wrk:wrk strace:strace taskset:util-linux python3:python3
# Debian's packages start the services; the benchmark runs its own instances only.
# (It does not stop system services: it uses its own ports, BASE_PORT+1.., and fails if one is taken.)

if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load on core 1)"; exit 1; fi

# ---- binaries
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load)
fi
for b in "${MCPLB:-target/release/mcplb}" "${LOAD_BIN:-target/release/mcplb-load}" ${MCPLB_B:+"$MCPLB_B"} ${MCPLB_C:+"$MCPLB_C"}; do
    [ -x "$b" ] || { say "missing $b (build with: cargo build --release -p mcplb -p mcplb-load)"; exit 1; }
done

# ---- file descriptors: 10 000 idle connections need more than the usual 1024
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "${IDLE_CONNS:-10000}" ]; then
    say "warning: open-file limit $(ulimit -n) is below IDLE_CONNS=${IDLE_CONNS:-10000}; the memory figure uses fewer connections"
fi

# ---- a quiet machine
wait_quiet "${LOAD_MAX:-1.0}" "${LOAD_WAIT:-600}"

# ---- run (the orchestrator stops every process it started, by PID, on exit)
# The orchestrator itself sits on core 1 with the load; it starts the proxies on core 0.
run_stoppable env SBS_COMMAND="$COMMAND" taskset -c 1 python3 "$ROOT/bench/side_by_side.py"
