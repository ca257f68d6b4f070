#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure that does not
# move with the machine's load (this VM has no hardware counters for `perf stat`), for A/B
# checks of a change to the request path on a busy machine.
#
#   bench/instructions.sh BIN[:EXTRA.toml] [BIN[:EXTRA.toml] ...]   (EXTRA: appended to the config)
#
# For each build: mcplb (one worker, the legacy epoll driver unless DRIVER says otherwise) in
# front of the stateless mock backend, under callgrind with collection off;
# wrk warms it up, callgrind's counters are zeroed, wrk (CONNS connections, SECS seconds, the
# 200-byte `tools/call` of bench/quick/post.lua) loads it, the counters are dumped. Prints
# instructions per request (total Ir / requests wrk counted) and the top functions.
# Settings (env): SECS (10), CONNS (8), LUA (the wrk script in bench/quick, post.lua), LOAD_BIN (mcplb-load for the mock), TOP (25), STATS
# (true; false leaves out the statistics, whose once-a-second flush is charged to however many
# requests that second saw), KEEP (a path prefix: keep each callgrind dump there), EXTRA (TOML
# appended to mcplb's config, e.g. a `[telemetry]` table), DRIVER (legacy; io-uring counts the
# user space of the io_uring driver: callgrind follows the ring's syscalls, the kernel's side
# of the ring is not counted in either driver).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SECS=${SECS:-10}; CONNS=${CONNS:-8}; TOP=${TOP:-25}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/mcplb-load}
RUN=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
MOCK_PORT=$(free_port)
"$LOAD_BIN" mock --listen "127.0.0.1:$MOCK_PORT" --stateless --threads 1 >"$RUN/mock.log" 2>&1 &
pids+=($!)
for spec in "$@"; do
    split_spec "$spec"; bin=$SPEC_BIN
    port=$(free_port)
    mcplb_toml "$port" "$MOCK_PORT" 1 "stats = ${STATS:-true}" "" "${EXTRA:-}" >"$RUN/p.toml"
    if [[ -n $SPEC_EXTRA ]]; then sed "s|@RUN@|$RUN|g" "$SPEC_EXTRA" >>"$RUN/p.toml"; fi
    out="$RUN/cg.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
        "$bin" run --config "$RUN/p.toml" --driver "${DRIVER:-legacy}" >"$RUN/p.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 600); do grep -q "mcplb started" "$RUN/p.log" && break; sleep 0.1; done
    url="http://127.0.0.1:$port/mcp"
    wrk -t1 -c"$CONNS" -d3s -s "$ROOT/bench/quick/${LUA:-post.lua}" "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    res=$(wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$ROOT/bench/quick/${LUA:-post.lua}" "$url")
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    # Under valgrind the io_uring worker may not finish a graceful stop: give it 10 s.
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    reqs=$(echo "$res" | awk '/requests in/ {print $1}')
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    echo "== $spec"
    echo "requests $reqs, instructions $total, per request $((total / reqs))"
    # --threshold=100: the default (99 %) stops after the thread's start frames, which
    # callgrind_annotate 3.19 lists at 100 % even with --inclusive=no; those are left out.
    callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null | sed -n '/^Ir/,$p' \
        | grep -E '^ *[0-9,]+ +\( *[0-9.]+%\)' | grep -v '(100.0%)' | head -n "$TOP" \
        | awk -v r="$reqs" '{gsub(",","",$1); printf "%8d  %s\n", $1 / r, $0}' | cut -c1-160
    if [[ -n "${KEEP:-}" ]]; then cp "$dump" "$KEEP.$(basename "$bin")"; fi
    rm -f "$out".*
done
