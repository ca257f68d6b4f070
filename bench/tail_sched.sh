#!/usr/bin/env bash
# Where the open-loop tail's millisecond goes (issue 18): the side-by-side run's tail cell
# (open loop, 10 000 req/s over 1 000 connections) against direct, mcplb, nginx and HAProxy in
# turn with `perf sched record -a` on both cores; per process, how often and how long its
# threads waited between a wake-up and running, and whether their core had been idle (a halted
# vCPU) just before. Writes bench/results/<date>-tail-sched.{md,json}.
#
#   bench/tail_sched.sh
#   SPIN="0 1" RESULT_NAME=tail-sched-spin bench/tail_sched.sh   # both cores kept from idling
#
# Settings (environment; see bench/tail_sched.py): TARGETS, RUNS (2), SECS (8), REC (4),
# TAIL_RATE, TAIL_CONNS, SPIN, MCPLB, LOAD_BIN, BASE_PORT (27200), OUT, RESULT_NAME, LOAD_MAX
# (1.0) and LOAD_WAIT (0: no wait) for a quiet machine, NO_BUILD=1 skips `cargo build`,
# NO_INSTALL=1 never calls apt-get.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SAY_TAG=tail-sched
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

install_missing nginx:nginx-light haproxy:haproxy wrk:wrk perf:linux-perf taskset:util-linux python3:python3
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load on core 1)"; exit 1; fi
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load)
fi
for b in "${MCPLB:-target/release/mcplb}" "${LOAD_BIN:-target/release/mcplb-load}"; do
    [ -x "$b" ] || { say "missing $b (build with: cargo build --release -p mcplb -p mcplb-load)"; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
wait_quiet "${LOAD_MAX:-1.0}" "${LOAD_WAIT:-0}"
run_stoppable taskset -c 1 python3 "$ROOT/bench/tail_sched.py"
