#!/usr/bin/env bash
# One call at a time (issue 21): the proxy's CPU per call, wake-ups, added p50/p99, syscalls
# per call and perf profiles when agents call tools one after another, mcplb beside nginx,
# HAProxy and no proxy (direct) in the same run. One command:
#
#   bench/one_call.sh                                   # writes bench/results/<date>-one-call.{md,json}
#   MCPLB_B=/path/to/other/mcplb TARGETS="direct mcplb mcplb-b nginx haproxy" bench/one_call.sh
#                                                       # the same, with an A/B of two builds
#
# Settings (environment; see bench/one_call.py): ROUNDS (5), SECS (10), PACED_SECS (SECS),
# TOGETHER (1: a paced cell's targets run at once), SLICES (1), THINK ("0 250": ms
# between a session's calls, 0 = back to back), SESSIONS ("1 8"), ANSWERS ("sse json"),
# TARGETS, MCPLB, MCPLB_B, STATS (true), IDLE_SECS (5), STRACE (1), PERF (1), PROFILE_CELL
# (sse/1/250), BASE_PORT (28600), OUT, TAG (one-call), LOAD_MAX (1.0) and LOAD_WAIT (0: no
# wait) for a quiet machine, NO_BUILD=1 skips `cargo build`, NO_INSTALL=1 never calls apt-get.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="bench/one_call.sh"
for v in ROUNDS SECS PACED_SECS TOGETHER SLICES THINK SESSIONS ANSWERS TARGETS MCPLB MCPLB_B STATS IDLE_SECS STRACE PERF \
         PROFILE_CELL BASE_PORT TAG NO_BUILD; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done

SAY_TAG=one-call
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

install_missing nginx:nginx-light haproxy:haproxy strace:strace taskset:util-linux python3:python3
if [ "${PERF:-1}" = 1 ]; then install_missing perf:linux-perf; fi
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load on core 1)"; exit 1; fi

if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load)
fi
for b in "${MCPLB:-target/release/mcplb}" target/release/mcplb-load ${MCPLB_B:+"$MCPLB_B"}; do
    [ -x "$b" ] || { say "missing $b (build with: cargo build --release -p mcplb -p mcplb-load)"; exit 1; }
done

wait_quiet "${LOAD_MAX:-1.0}" "${LOAD_WAIT:-0}"

# The orchestrator sits on core 1 with the load; it starts the proxies on core 0.
run_stoppable env ONE_CALL_COMMAND="$COMMAND" taskset -c 1 python3 "$ROOT/bench/one_call.py"
