#!/usr/bin/env bash
# Memory held by the statistics with many distinct tools: RSS of a real mcplb (one server
# group, one backend, the bundled mock) idle, then while 64 distinct tools are called for
# longer than the 60 s rolling window, so that every per-core recorder and every slot of the
# hub's window holds every tool. Run once per worker count; the growth per added worker is
# what one core's recorder costs.
#
#   bench/stats_memory.sh [MCPLB_BINARY]      (default target/release/mcplb)
#   WORKERS="1 2" SECONDS_LOADED=75 TOOLS=64 bench/stats_memory.sh
#
# Loopback only; ports 18180-18182. Prints one line per sample and a summary line per run.
set -euo pipefail
SAY_TAG=stats-memory
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"

MCPLB=${1:-target/release/mcplb}
LOAD=${LOAD:-target/release/mcplb-load}
WORKERS=${WORKERS:-"1 2"}
SECONDS_LOADED=${SECONDS_LOADED:-75}
TOOLS=${TOOLS:-64}
CONNS=${CONNS:-8}
RATE=${RATE:-2000}
dir=$(mktemp -d)
mock=""
mp=""
cleanup() {
    for p in $mp $mock; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

"$LOAD" mock --listen 127.0.0.1:18181 --stateless >"$dir/mock.log" 2>&1 &
mock=$!

{
    echo 'stateless = true'
    echo "connections = $CONNS"
    echo "rate = $RATE"
    echo 'warmup = "0s"'
    echo "duration = \"${SECONDS_LOADED}s\""
    for i in $(seq 0 $((TOOLS - 1))); do
        printf '[[calls]]\nmethod = "tools/call"\ntool = "tool_%02d"\narguments = {}\nweight = 1\n' "$i"
    done
} >"$dir/scenario.toml"

for w in $WORKERS; do
    mcplb_toml 18180 18181 "$w" '[admin]
listen = "127.0.0.1:18182"' >"$dir/mcplb.toml"
    "$MCPLB" run --config "$dir/mcplb.toml" >"$dir/mcplb.log" 2>&1 &
    mp=$!
    sleep 2
    idle=$(rss_kib "$mp")
    say "workers=$w idle RSS ${idle} KiB"
    "$LOAD" run --url http://127.0.0.1:18180/mcp --scenario "$dir/scenario.toml" --quiet --json \
        >"$dir/load.json" 2>"$dir/load.err" &
    lp=$!
    t=0
    peak=$idle
    while kill -0 "$lp" 2>/dev/null; do
        sleep 5
        t=$((t + 5))
        r=$(rss_kib "$mp" || echo 0)
        [ "$r" -gt "$peak" ] && peak=$r
        say "workers=$w t=${t}s RSS ${r} KiB"
    done
    wait "$lp" || true
    loaded=$(rss_kib "$mp")
    tools_seen=$(curl -s http://127.0.0.1:18182/stats | python3 -c \
        'import json,sys; d=json.load(sys.stdin); print(len(d["since_start"]["tools"]), d["counters"]["requests"])')
    echo "workers=$w idle_kib=$idle loaded_kib=$loaded peak_kib=$peak growth_kib=$((loaded - idle)) tools,requests=${tools_seen// /,}"
    kill -TERM "$mp"
    wait "$mp" 2>/dev/null || true
    mp=""
    sleep 1
done
