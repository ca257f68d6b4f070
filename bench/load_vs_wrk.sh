#!/usr/bin/env bash
# mcplb-load vs wrk on the same closed-loop target (issue #7's agreement figure): the mock MCP
# backend alone on one core, each load tool in turn alone on the other, same connections, same
# request, stateless and with sessions. Loopback only.
#
#   bench/load_vs_wrk.sh                  # writes bench/results/<date>-load-vs-wrk.{md,json}
#   DURATION=3 RUNS=5 bench/load_vs_wrk.sh
#
# Settings (environment): DURATION (s per run, 5), RUNS (counted pairs per mode, 9), CONNS (64),
# MODES ("stateless session"), LOAD_CORE (0), MOCK_CORE (1), BASE_PORT (27100), OUT, TAG (a
# suffix for the results files' names);
# LOAD_MAX (1.0) and LOAD_WAIT (0): wait up to LOAD_WAIT s for the 1-min load average to drop
# below LOAD_MAX before starting (the results record the load and the foreign CPU either way);
# NO_BUILD=1 skips `cargo build`; NO_INSTALL=1 never calls apt-get.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="bench/load_vs_wrk.sh"
for v in DURATION RUNS CONNS MODES LOAD_CORE MOCK_CORE BASE_PORT OUT TAG LOAD_MAX LOAD_WAIT NO_BUILD; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done

SAY_TAG=load-vs-wrk
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

# ---- tools: wrk, taskset, python3 (Debian/Ubuntu packages)
install_missing wrk:wrk taskset:util-linux python3:python3
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (load tool on one, mock backend on another)"; exit 1; fi

# ---- binary (release; a CARGO_TARGET_DIR set in the environment is honoured)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb-load (release)"
    cargo build --release -q -p mcplb-load </dev/null
fi
[ -x "$BIN/mcplb-load" ] || { say "missing $BIN/mcplb-load (build with: cargo build --release -p mcplb-load)"; exit 1; }

# ---- a quiet machine, if asked for
wait_quiet "${LOAD_MAX:-1.0}" "${LOAD_WAIT:-0}"

# ---- run (the orchestrator stops every process it started, by PID, on exit)
run_stoppable env BIN="$BIN" LVW_COMMAND="$COMMAND" python3 "$ROOT/bench/load_vs_wrk.py"
