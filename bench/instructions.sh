#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure that does not
# move with the machine's load (this VM has no hardware counters for `perf stat`), for A/B
# checks of a change to the request path on a busy machine.
#
#   bench/instructions.sh BIN[:EXTRA.toml] [BIN[:EXTRA.toml] ...]   (EXTRA: appended to the config)
#   bench/instructions.sh BIN nginx      # `nginx`: nginx (bench/conf/nginx.conf.tmpl) in the same place
#
# For each build: mcplb (one worker, the legacy epoll driver unless DRIVER says otherwise) in
# front of the stateless mock backend, under callgrind with collection off;
# wrk warms it up, callgrind's counters are zeroed, wrk (CONNS connections, SECS seconds, the
# 200-byte `tools/call` of bench/quick/post.lua) loads it, the counters are dumped. Prints
# instructions per request (total Ir / requests wrk counted) and the top functions.
# PATH_MODE=era counts the era bridge's path (2026-07-28 requests bridged to the stateful
# mock's 2025 session, as bench/ab.sh MODE=era's B side).
# PATH_MODE=session counts the path bench/one_call.sh runs instead (issue 21): the stateful mock
# answering `tools/call` as SSE (`mcplb-load mock --sse`), loaded by `mcplb-load run` with CONNS
# MCP sessions (one per connection, sealed `Mcp-Session-Id`, one call in flight each; the
# arguments of bench/side_by_side.py); the measured run's setup (each session's initialize and
# notifications/initialized, 2 x CONNS exchanges) is among its requests: a paced run counts
# RATE x SECS calls + 2 x CONNS (RATE=32 and RATE=16 SECS=20 both count 336 with 8
# connections: the same 320 calls). REQUESTS=N (session, or stateless with RATE): the measured
# run is N calls (+ the setup) whatever the time, e.g. for the same count in every build.
# RATE: calls per second over all connections (`--rate`), e.g. RATE=4 with CONNS=1 for
# bench/one_call.sh's paced cell (a call every 250 ms: the connection parks in between); with
# PATH_MODE=stateless, `mcplb-load run --stateless` sends the side-by-side's stateless call open
# loop instead of wrk: RATE=100 CONNS=10 is the regime of issue 18's tail cell (each connection
# sends every 100 ms) at a rate callgrind keeps up with.
# Settings (env): PATH_MODE (stateless | session | era), SECS (10), CONNS (8), LUA (the wrk script in
# bench/quick, post.lua; stateless only), LOAD_BIN (mcplb-load for the mock and the session
# load), TOP (25), INCLUSIVE (1: also the top functions by inclusive count), STATS
# (true; false leaves out the statistics, whose once-a-second flush is charged to however many
# requests that second saw), KEEP (a path prefix: keep each callgrind dump there), EXTRA (TOML
# appended to mcplb's config, e.g. a `[telemetry]` table), DRIVER (legacy; io-uring counts the
# user space of the io_uring driver: callgrind follows the ring's syscalls, the kernel's side
# of the ring is not counted in either driver), CACHE_SIM (1: callgrind also simulates the
# caches and prints the instruction-cache misses per request, I1 (its 32 KiB L1i) and LL: how
# densely the code a request runs is laid out, e.g. a PGO or BOLT build against another; the
# simulation has no other processes, so it counts a warm steady state, not the cold caches of
# a paced call), TLS (1, mcplb specs only: mcplb terminates TLS with a certificate made for the run by openssl,
# ECDSA P-256; the load keeps its connections, so the count is record encryption and proxying,
# not handshakes), LOADER (wrk, the default, or h2load: HTTP/2 from Debian's nghttp2-client,
# CONNS connections with one stream in flight each, h2c with prior knowledge or ALPN h2 under
# TLS, the request and headers of the LUA script; not with PATH_MODE=session; or h3: HTTP/3 by
# `mcplb-load h3`, CONNS QUIC connections with one request stream in flight each, 2026-07-28
# stateless calls, or with PATH_MODE=session a session each (initialize, then calls); implies
# TLS=1 and `[proxy.http3]` on the same port number; the count includes the CONNS handshakes of
# the measured run; REQUESTS=N: the measured run is N calls instead of SECS seconds), NEW_CONN
# (1, wrk only: `Connection: close` on every request, so each request is a new connection and,
# with TLS=1, a new TLS handshake: the handshake per request).
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
PATH_MODE=${PATH_MODE:-stateless}
case $PATH_MODE in
    stateless) MOCK_ARGS=(--stateless) ;;
    session) MOCK_ARGS=(--sse) ;;
    # The era bridge (bench/ab.sh MODE=era): 2026-07-28 requests (post_modern.lua) to a group
    # with era = "2025", bridged through a session of the stateful mock.
    era) MOCK_ARGS=() LUA=${LUA:-post_modern.lua} GROUP='era = "2025"' ;;
    *) echo "PATH_MODE: $PATH_MODE is none of stateless, session, era" >&2; exit 2 ;;
esac
ARGS_JSON='{"query":"what is the weather in Paris today","limit":10}'
LOADER=${LOADER:-wrk}
case $LOADER in
    wrk) ;;
    h2load)
        [[ $PATH_MODE != session ]] || { echo "LOADER=h2load: not with PATH_MODE=session" >&2; exit 2; }
        H2_ARGS=()
        while IFS= read -r line; do H2_ARGS+=("$line"); done < <(h2load_request "$ROOT/bench/quick/${LUA:-post.lua}" "$RUN/body.json")
        ;;
    h3) TLS=1 ;;
    *) echo "LOADER: $LOADER is none of wrk, h2load, h3" >&2; exit 2 ;;
esac
WRK_ARGS=()
if [[ ${NEW_CONN:-0} == 1 ]]; then
    [[ $LOADER == wrk && $PATH_MODE != session && -z ${RATE:-} ]] || { echo "NEW_CONN=1: wrk only" >&2; exit 2; }
    WRK_ARGS=(-H "Connection: close")
fi
SCHEME=http TLS_LINES=""
if [[ ${TLS:-0} == 1 ]]; then
    SCHEME=https
    make_cert "$RUN"
    TLS_LINES=$(printf '[proxy.tls]\ncert = "%s"\nkey = "%s"' "$RUN/cert.pem" "$RUN/key.pem")
fi
# load_h3 SECONDS (LOADER=h3): HTTP/3 load on $url; prints the calls answered.
load_h3() {
    local stateless=() limit=(--duration "${1}s")
    if [[ $PATH_MODE != session ]]; then stateless=(--stateless); fi
    # REQUESTS: the measured run sends that many calls (at most 10 minutes), so that the
    # CONNS handshakes it includes weigh the same in every build's count.
    if [[ -n ${MEASURED:-} && -n ${REQUESTS:-} ]]; then limit=(--duration 600s --requests "$REQUESTS"); fi
    "$LOAD_BIN" h3 --url "$url" --connections "$CONNS" "${limit[@]}" "${stateless[@]}" \
        --args "$ARGS_JSON" --json | tail -1 | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["ok"])'
}
# load SECONDS: drives the proxy at $url, prints the requests it completed.
load() {
    if [[ $LOADER == h3 ]]; then
        load_h3 "$1"
    elif [[ $PATH_MODE == session || ( $PATH_MODE == stateless && -n ${RATE:-} ) ]]; then
        local stateless=() limit=(--duration "${1}s")
        if [[ $PATH_MODE == stateless ]]; then stateless=(--stateless); fi
        if [[ -n ${MEASURED:-} && -n ${REQUESTS:-} ]]; then limit=(--requests "$REQUESTS"); fi
        "$LOAD_BIN" run --url "$url" --connections "$CONNS" "${limit[@]}" --warmup 0s "${stateless[@]}" \
            ${RATE:+--rate "$RATE"} --args "$ARGS_JSON" --json --quiet | tail -1 \
            | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["exchanges"])'
    elif [[ $LOADER == h2load ]]; then
        # requests: N total, N started, N done, N succeeded, ...: the succeeded ones.
        h2load -D "$1" -c "$CONNS" -m 1 -t 1 -d "$RUN/body.json" "${H2_ARGS[@]}" "$url" \
            | awk -F'[:,]' '/^requests:/ {sub(/ succeeded/, "", $5); print $5 + 0}'
    else
        wrk -t1 -c"$CONNS" -d"${1}s" "${WRK_ARGS[@]}" -s "$ROOT/bench/quick/${LUA:-post.lua}" "$url" \
            | awk '/requests in/ {print $1}'
    fi
}
"$LOAD_BIN" mock --listen "127.0.0.1:$MOCK_PORT" "${MOCK_ARGS[@]}" --threads 1 >"$RUN/mock.log" 2>&1 &
pids+=($!)
for spec in "$@"; do
    split_spec "$spec"; bin=$SPEC_BIN
    port=$(free_port)
    h3_lines=""
    if [[ $LOADER == h3 ]]; then h3_lines=$(printf '[proxy.http3]\nlisten = "127.0.0.1:%s"' "$port"); fi
    mcplb_toml "$port" "$MOCK_PORT" 1 "stats = ${STATS:-true}
$TLS_LINES
$h3_lines" "${GROUP:-}" "${EXTRA:-}" >"$RUN/p.toml"
    if [[ -n $SPEC_EXTRA ]]; then sed "s|@RUN@|$RUN|g" "$SPEC_EXTRA" >>"$RUN/p.toml"; fi
    out="$RUN/cg.out"
    cache=()
    if [[ ${CACHE_SIM:-0} == 1 ]]; then cache=(--cache-sim=yes); fi
    if [[ $spec == nginx ]]; then
        # nginx in the same place: bench/conf/nginx.conf.tmpl in one process (no master), so
        # callgrind counts its one worker.
        mkdir -p "$RUN/nginx-$port-body" "$RUN/nginx-$port-proxy"
        { echo "master_process off;"
          sed -e "s|\${RUNDIR}|$RUN|g" -e "s|\${LISTEN}|$port|g" -e "s|\${BACKEND}|$MOCK_PORT|g" \
              -e '/worker_cpu_affinity/d' "$ROOT/bench/conf/nginx.conf.tmpl"; } >"$RUN/nginx.conf"
        valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "${cache[@]}" \
            nginx -p "$RUN" -e "$RUN/nginx-startup.log" -c "$RUN/nginx.conf" >"$RUN/p.log" 2>&1 &
        pid=$!
        pids+=("$pid")
        for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    else
        valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "${cache[@]}" \
            "$bin" run --config "$RUN/p.toml" --driver "${DRIVER:-legacy}" >"$RUN/p.log" 2>&1 &
        pid=$!
        pids+=("$pid")
        for _ in $(seq 600); do grep -q "mcplb started" "$RUN/p.log" && break; sleep 0.1; done
    fi
    url="$SCHEME://127.0.0.1:$port/mcp"
    load 3 >/dev/null
    callgrind_control -z "$pid" >/dev/null
    reqs=$(MEASURED=1 load "$SECS")
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    # Under valgrind the io_uring worker may not finish a graceful stop: give it 10 s.
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    client=$LOADER
    if [[ $PATH_MODE == session ]]; then client=mcplb-load; fi
    if [[ $LOADER == h3 ]]; then client="mcplb-load h3"; fi
    echo "== $spec ($PATH_MODE, $CONNS connections, $client$([[ $SCHEME == https ]] && echo ", TLS")$([[ ${NEW_CONN:-0} == 1 ]] && echo ", a new connection per request"))"
    echo "requests $reqs, instructions $total, per request $((total / reqs))"
    if [[ ${CACHE_SIM:-0} == 1 ]]; then
        # The totals' columns follow the "Events shown:" line (Ir Dr Dw I1mr D1mr D1mw ILmr ...).
        callgrind_annotate "$dump" 2>/dev/null | awk -v r="$reqs" '
            /^Events shown:/ { for (i = 3; i <= NF; i++) col[$i] = i - 2 }
            /PROGRAM TOTALS/ { # counts, each maybe followed by its "(100.0%)"
                n = 0
                for (i = 1; i <= NF; i++) if ($i ~ /^[0-9,]+$/) { gsub(",", "", $i); v[++n] = $i }
                i1 = v[col["I1mr"]]; ll = v[col["ILmr"]]
                printf "instruction-cache misses per request: I1 %.1f, LL %.1f\n", i1 / r, ll / r }'
    fi
    # Self counts. The threads' entry frames, charged the whole total by the zeroing in flight,
    # are left out (without --threshold=100 they end the list).
    callgrind_annotate --inclusive=no --threshold=100 --auto=no "$dump" 2>/dev/null \
        | sed -n '/file:function/,$p' | sed -n '3,$p' | awk -v t="$total" '{c=$1; gsub(",","",c)} c + 0 < t * 0.9' \
        | sed -n "1,${TOP}p" | awk -v r="$reqs" '{gsub(",","",$1); printf "%8d  %s\n", $1 / r, $0}' | cut -c1-160
    if [[ ${INCLUSIVE:-0} == 1 ]]; then
        echo "-- inclusive, per request"
        callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$dump" 2>/dev/null \
            | sed -n '/file:function/,$p' | sed -n "3,$((TOP + 2))p" \
            | awk -v r="$reqs" '{gsub(",","",$1); printf "%8d  %s\n", $1 / r, $0}' | cut -c1-160
    fi
    if [[ -n "${KEEP:-}" ]]; then cp "$dump" "$KEEP.$(basename "$bin")"; fi
    rm -f "$out".*
done
