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

say() { echo "[load-vs-wrk] $*" >&2; }

# ---- tools: wrk, taskset, python3 (Debian/Ubuntu packages)
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    if [ -n "${NO_INSTALL:-}" ]; then say "missing: ${need[*]} (NO_INSTALL set)"; exit 1; fi
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    say "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (load tool on one, mock backend on another)"; exit 1; fi

# ---- binary (release; a CARGO_TARGET_DIR set in the environment is honoured)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb-load (release)"
    cargo build --release -q -p mcplb-load </dev/null
fi
[ -x "$BIN/mcplb-load" ] || { say "missing $BIN/mcplb-load (build with: cargo build --release -p mcplb-load)"; exit 1; }

# ---- a quiet machine, if asked for
LOAD_MAX=${LOAD_MAX:-1.0}
LOAD_WAIT=${LOAD_WAIT:-0}
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
BIN="$BIN" LVW_COMMAND="$COMMAND" python3 "$ROOT/bench/load_vs_wrk.py" &
PY=$!
wait "$PY"
rc=$?
PY=""
exit $rc
