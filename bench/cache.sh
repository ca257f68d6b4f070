#!/usr/bin/env bash
# The response cache's hit path against a backend round trip (issue 16), same run: one mcplb
# build twice, A without a cache and B with `[servers.cache]` keeping the mock's `tools/list`
# (it sends no hints: `default_ttl = "60s"`, `default_scope = "public"`), both loaded in turn
# by wrk with the same `tools/list` (bench/quick/post_list.lua) through bench/ab.sh: proxy CPU
# µs per request, req/s and p50/p99 latency, A B A B ... Writes
# bench/results/<date>-ab-cache.md (B/A ratios: the hit path's cost against a round trip).
#
#   bench/cache.sh                    # target/release/mcplb
#   PAIRS=3 SECS=4 bench/cache.sh     # shorter (ab.sh's settings apply)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release/mcplb}
[[ -x $BIN ]] || { echo "needs $BIN (cargo build --release -p mcplb -p mcplb-load)"; exit 2; }
export SCRIPT=post_list.lua TAG=${TAG:-cache}
export EXTRA_B='[servers.cache]
default_ttl = "60s"
default_scope = "public"'
exec bench/ab.sh "$BIN" "$BIN"
