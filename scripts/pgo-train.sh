#!/usr/bin/env bash
# The training run of the release build (scripts/build-pgo.sh runs it twice: against the
# PGO-instrumented mcplb, then against the BOLT-instrumented one). It can run against any
# mcplb, e.g. a plain release build, to check that it still works (scripts/test.sh does, with
# TRAIN_SECS=1):
#
#   scripts/pgo-train.sh BIN        # BIN: the mcplb to train; its profile is its own business
#                                   # (LLVM_PROFILE_FILE for PGO, a path built into BOLT's)
#
# One mcplb (one worker, 100 policy rules and the audit trail on) in front of three mocks
# (session, stateless, SSE-answered), loaded by mcplb-load with the mixes agents and benchmarks
# make: one call in flight paced (every 250 ms) and back to back, 8 paced sessions, 64
# connections saturated, in sessions, stateless and SSE-answered. Then the paths those do not
# run, loaded by h2load (Debian's nghttp2-client, installed when missing), 8 connections: HTTP/2
# (h2c with prior knowledge, one stream a connection and 4 connections of 16), the response
# cache's hits (`tools/list` of a group with `[servers.cache]`), the era bridge (2026-07-28
# requests to a group with `era = "2025"` in front of the session mock) and, through a second
# mcplb terminating TLS (a certificate made by openssl for the run), HTTP/1.1 and HTTP/2 (ALPN)
# over TLS, TLS handshakes (HTTP/1.1 with `Connection: close`: a new connection and handshake per
# request) and HTTP/3 (`mcplb-load h3` over QUIC on the same port number: sessions, initialize
# then tools/call answered as SSE, 8 connections; and stateless calls, 4 connections each
# replaced after 4 calls, so QUIC handshakes and Retries too). Stops each mcplb with SIGTERM (an instrumented build writes its profile on the way
# out) and fails when a step had no answered call or an mcplb did not exit cleanly.
#
# Settings (environment): TRAIN_SECS (seconds per step, default 8; 19 steps, the handshake
# step a count of 250 x TRAIN_SECS requests), LOAD_BIN (the
# mcplb-load to train with; default target/release/mcplb-load, built when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SAY_TAG=${SAY_TAG:-train}
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

case ${1:-} in
    -h | --help | "")
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        [[ -n ${1:-} ]]
        exit
        ;;
esac
BIN=$(realpath "$1")
[[ -x $BIN ]] || { say "not an executable: $1"; exit 2; }
install_missing h2load:nghttp2-client openssl:openssl
SECS=${TRAIN_SECS:-8}
LOAD=${LOAD_BIN:-}
if [[ -z $LOAD ]]; then
    LOAD=$ROOT/target/release/mcplb-load
    if [[ ! -x $LOAD ]]; then
        say "building mcplb-load (release)"
        CARGO_INCREMENTAL=0 cargo build --release -q --locked -p mcplb-load
    fi
fi

RUN=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT
wait_port() {
    for _ in $(seq 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    say "nothing listens on port $1:"
    tail -n 20 "$RUN"/*.log >&2
    exit 1
}

PORT=$(free_port)
cat >"$RUN/mcplb.toml" <<EOC
[proxy]
listen = "127.0.0.1:$PORT"
workers = 1
max_connections_per_ip = 100000
EOC
# One group per mock, named as its path; after the colon, the mock's option.
ports=("$PORT")
for mock in session: stateless:--stateless sse:--sse; do
    name=${mock%%:*}
    port=$(free_port)
    # shellcheck disable=SC2086 # no option or one, unquoted on purpose
    "$LOAD" mock --listen "127.0.0.1:$port" ${mock#*:} --threads 1 >"$RUN/mock-$name.log" 2>&1 &
    pids+=($!)
    ports+=("$port")
    printf '\n[[servers]]\nname = "%s"\npath = "/%s"\nbackends = ["http://127.0.0.1:%s/mcp"]\n[servers.health]\nenabled = false\n' \
        "$name" "$name" "$port" >>"$RUN/mcplb.toml"
done
# The cache's hits (the stateless mock's tools/list, which sends no cache hints) and the era
# bridge (2026-07-28 requests bridged through sessions of the session mock).
cat >>"$RUN/mcplb.toml" <<EOC

[[servers]]
name = "cached"
path = "/cached"
backends = ["http://127.0.0.1:${ports[2]}/mcp"]
[servers.health]
enabled = false
[servers.cache]
default_ttl = "60s"
default_scope = "public"

[[servers]]
name = "era"
path = "/era"
era = "2025"
backends = ["http://127.0.0.1:${ports[1]}/mcp"]
[servers.health]
enabled = false
EOC
# The same mcplb terminating TLS, on a port of its own (one listener a process), with HTTP/3
# on the same port number (UDP).
make_cert "$RUN"
TLS_PORT=$(free_port)
sed -e "s|^listen = \"127.0.0.1:$PORT\"|listen = \"127.0.0.1:$TLS_PORT\"|" \
    -e "s|^max_connections_per_ip = 100000|&\\n[proxy.tls]\\ncert = \"$RUN/cert.pem\"\\nkey = \"$RUN/key.pem\"\\n[proxy.http3]\\nlisten = \"127.0.0.1:$TLS_PORT\"|" \
    "$RUN/mcplb.toml" >"$RUN/mcplb-tls.toml"
echo >>"$RUN/mcplb.toml"
sed "s|@RUN@|$RUN|g" "$ROOT/bench/conf/policy/on.toml" >>"$RUN/mcplb.toml"
"$BIN" run --config "$RUN/mcplb.toml" >"$RUN/mcplb.log" 2>&1 &
MCPLB_PID=$!
pids+=("$MCPLB_PID")
for p in "${ports[@]}"; do wait_port "$p"; done

ARGS='{"query":"what is the weather in Paris today","limit":10}'
train() { # path connections rate|- [more mcplb-load options]
    local path=$1 conns=$2 rate=$3
    shift 3
    local extra=("$@")
    if [[ $rate != - ]]; then extra+=(--rate "$rate"); fi
    local summary
    summary=$("$LOAD" run --url "http://127.0.0.1:$PORT/$path" --connections "$conns" --duration "${SECS}s" \
        --warmup 0s --args "$ARGS" --quiet --json "${extra[@]}" | tail -n 1 |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["ok"], j["errors"]["total"])')
    say "trained: /$path, $conns connections, rate $rate${*:+ $*}: ${summary% *} calls answered, ${summary#* } errors"
    [[ ${summary% *} -gt 0 ]] || {
        say "no call was answered:"
        tail -n 20 "$RUN/mcplb.log" >&2
        exit 1
    }
}
for path in sse session; do
    train "$path" 1 4  # one agent calling every 250 ms
    train "$path" 8 32 # 8 agents, each every 250 ms
    train "$path" 1 -  # one call in flight, back to back
    train "$path" 64 - # saturated
done
train stateless 1 4 --stateless
train stateless 64 - --stateless

# h2load steps: the request (body and headers) of a bench/quick wrk script.
h2train() { # url wrk-script connections streams [h2load options]: one step
    local url=$1 lua=$2 conns=$3 streams=$4 args=() line out proto ok errors limit=(-D "$SECS")
    shift 4
    # H2_REQUESTS: a count instead of a duration (h2load's -D waits forever for clients whose
    # server closes their connections).
    if [[ -n ${H2_REQUESTS:-} ]]; then limit=(-n "$H2_REQUESTS"); fi
    while IFS= read -r line; do args+=("$line"); done < <(h2load_request "$ROOT/bench/quick/$lua" "$RUN/body.json")
    out=$(h2load "${limit[@]}" -c "$conns" -m "$streams" -t 1 -d "$RUN/body.json" "${args[@]}" "$@" "$url") || {
        say "h2load failed on $url:"
        echo "$out" >&2
        exit 1
    }
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    read -r ok errors < <(awk -F'[:,]' '/^requests:/ {print $5 + 0, $6 + $7 + 0}' <<<"$out")
    # h2load names the protocol it spoke: h2c, h2 (ALPN) or http/1.1.
    proto=$(awk '/^Application protocol:/ {print $3}' <<<"$out")
    say "trained: /${url#*://*/}, ${url%%:*} $proto, $conns connections x $streams streams, $lua: $ok calls answered, $errors errors"
    [[ ${ok:-0} -gt 0 ]] || {
        say "no call was answered:"
        echo "$out" >&2
        tail -n 20 "$RUN"/mcplb*.log >&2
        exit 1
    }
}
h2train "http://127.0.0.1:$PORT/stateless" post.lua 8 1
h2train "http://127.0.0.1:$PORT/stateless" post.lua 4 16
h2train "http://127.0.0.1:$PORT/cached" post_list.lua 8 1 --h1
h2train "http://127.0.0.1:$PORT/era" post_modern.lua 8 1 --h1

stop() { # pid log: SIGTERM, then fails unless it exited cleanly
    say "stopping mcplb (an instrumented build writes its profile on the way out)"
    kill -TERM "$1"
    local status=0
    wait "$1" || status=$?
    pids=("${pids[@]/$1/}")
    [[ $status -eq 0 ]] || {
        say "mcplb exited with status $status:"
        tail -n 20 "$2" >&2
        exit 1
    }
}
stop "$MCPLB_PID" "$RUN/mcplb.log"

"$BIN" run --config "$RUN/mcplb-tls.toml" >"$RUN/mcplb-tls.log" 2>&1 &
MCPLB_PID=$!
pids+=("$MCPLB_PID")
wait_port "$TLS_PORT"
h2train "https://127.0.0.1:$TLS_PORT/stateless" post.lua 8 1 --h1
h2train "https://127.0.0.1:$TLS_PORT/stateless" post.lua 8 1
# TLS handshakes: each request on a new connection (mcplb closes it after the answer).
H2_REQUESTS=$((SECS * 250)) h2train "https://127.0.0.1:$TLS_PORT/stateless" post.lua 4 1 --h1 -H "connection: close"

h3train() { # path connections [mcplb-load h3 options]: one HTTP/3 step
    local path=$1 conns=$2 summary
    shift 2
    summary=$("$LOAD" h3 --url "https://127.0.0.1:$TLS_PORT/$path" --connections "$conns" --duration "${SECS}s" \
        --args "$ARGS" --json "$@" | tail -n 1 |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["ok"], j["errors"], j["connections"])')
    read -r ok errors quic <<<"$summary"
    say "trained: /$path, HTTP/3, $conns connections${*:+ $*}: $ok calls answered, $errors errors, $quic QUIC connections"
    [[ $ok -gt 0 ]] || {
        say "no call was answered:"
        tail -n 20 "$RUN/mcplb-tls.log" >&2
        exit 1
    }
}
h3train sse 8
h3train stateless 4 --stateless --calls-per-connection 4
stop "$MCPLB_PID" "$RUN/mcplb-tls.log"
