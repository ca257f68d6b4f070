#!/usr/bin/env bash
# A profile-guided (PGO) release build of mcplb (issue 21: the cold-call cost is i-cache and
# iTLB misses over all the code a call touches; PGO lays hot code out together).
#
#   scripts/build-pgo.sh            # -> target/pgo/x86_64-unknown-linux-gnu/release/mcplb
#
# 1. builds mcplb instrumented (-Cprofile-generate) and mcplb-load (plain release);
# 2. trains it: one mcplb (one worker, policies and the audit trail on) in front of three
#    mocks (session, stateless, SSE-answered), loaded by mcplb-load with the mixes agents and
#    benchmarks make: one call in flight paced and back to back, 8 paced sessions, 64
#    connections saturated, in sessions, stateless and SSE-answered;
# 3. merges the raw profiles with llvm-profdata (LLVM 19 from Debian, installed when
#    missing: it reads rustc 1.95's raw profile version) and
# 4. rebuilds with -Cprofile-use, hot and cold code in their own text sections
#    (-z keep-text-section-prefix: rust-lld, the default linker, otherwise merges them).
#
# Settings (environment): TRAIN_SECS (seconds per training step, default 8), PROFDATA (the
# llvm-profdata to use, default llvm-profdata-19), LOAD_BIN (an mcplb-load to train with
# instead of building target/release/mcplb-load), GEN_BIN (an instrumented mcplb already built,
# e.g. by an earlier run: target/pgo-gen/x86_64-unknown-linux-gnu/release/mcplb), NO_INSTALL=1
# never calls apt-get.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SAY_TAG=pgo
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

TRIPLE=x86_64-unknown-linux-gnu
SECS=${TRAIN_SECS:-8}
PROFDATA=${PROFDATA:-llvm-profdata-19}
GEN_DIR=$ROOT/target/pgo-gen
OUT_DIR=$ROOT/target/pgo
PROF_DIR=$ROOT/target/pgo-profiles
export CARGO_INCREMENTAL=0

install_missing "$PROFDATA:llvm-19"

rm -rf "$PROF_DIR"
mkdir -p "$PROF_DIR"
if [[ -z ${GEN_BIN:-} ]]; then
    # --target: the flags reach mcplb's crates only, not build scripts and proc macros.
    say "building mcplb instrumented ($GEN_DIR)"
    RUSTFLAGS="-Cprofile-generate=$PROF_DIR" \
        cargo build --release -q -p mcplb --target "$TRIPLE" --target-dir "$GEN_DIR"
    GEN_BIN=$GEN_DIR/$TRIPLE/release/mcplb
fi
LOAD=${LOAD_BIN:-}
if [[ -z $LOAD ]]; then
    say "building mcplb-load (release)"
    cargo build --release -q -p mcplb-load
    LOAD=$ROOT/target/release/mcplb-load
fi

RUN=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
wait_port() {
    for _ in $(seq 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    say "nothing listens on port $1; see $RUN/*.log"; exit 1
}

PORT=$(free_port)
cat >"$RUN/mcplb.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PORT"
workers = 1
max_connections_per_ip = 100000
EOF
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
echo >>"$RUN/mcplb.toml"
sed "s|@RUN@|$RUN|g" "$ROOT/bench/conf/policy/on.toml" >>"$RUN/mcplb.toml"
LLVM_PROFILE_FILE="$PROF_DIR/mcplb-%p-%m.profraw" "$GEN_BIN" run --config "$RUN/mcplb.toml" >"$RUN/mcplb.log" 2>&1 &
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
    [[ ${summary% *} -gt 0 ]] || { say "no call was answered; see $RUN/mcplb.log"; exit 1; }
}
for path in sse session; do
    train "$path" 1 4          # one agent calling every 250 ms
    train "$path" 8 32         # 8 agents, each every 250 ms
    train "$path" 1 -          # one call in flight, back to back
    train "$path" 64 -         # saturated
done
train stateless 1 4 --stateless
train stateless 64 - --stateless

say "stopping the instrumented mcplb (it writes its profile on the way out)"
kill -TERM "$MCPLB_PID"
wait "$MCPLB_PID" || true
shopt -s nullglob
raw=("$PROF_DIR"/*.profraw)
[[ ${#raw[@]} -gt 0 ]] || { say "no .profraw in $PROF_DIR; see $RUN/mcplb.log"; exit 1; }
"$PROFDATA" merge -o "$PROF_DIR/merged.profdata" "${raw[@]}"
say "merged ${#raw[@]} raw profile(s) into $PROF_DIR/merged.profdata"

say "building mcplb with the profile ($OUT_DIR)"
RUSTFLAGS="-Cprofile-use=$PROF_DIR/merged.profdata -Clink-arg=-Wl,-z,keep-text-section-prefix" \
    cargo build --release -q -p mcplb --target "$TRIPLE" --target-dir "$OUT_DIR"
say "done: $OUT_DIR/$TRIPLE/release/mcplb"
