#!/usr/bin/env bash
# The optimised release build of mcplb: profile-guided (PGO), optionally laid out by BOLT (issue 21:
# a call made after an idle pause runs on cold caches, and its cost is i-cache and iTLB misses
# over all the code it touches; PGO and BOLT put the code a call runs together).
#
#   scripts/build-pgo.sh            # -> target/pgo/mcplb (scripts/release.sh packs it)
#
# 1. builds mcplb instrumented (-Cprofile-generate) and trains it (scripts/pgo-train.sh: the
#    mixes agents and benchmarks make, in sessions, stateless and SSE-answered);
# 2. merges the raw profiles with llvm-profdata (LLVM 19 from Debian, installed when missing:
#    it reads rustc 1.95's raw profile version) and rebuilds with -Cprofile-use, hot and cold
#    code in their own text sections (-z keep-text-section-prefix: rust-lld, the default
#    linker, otherwise merges them) and, for BOLT, its relocations kept (--emit-relocs);
# 3. (BOLT=1) instruments that build with llvm-bolt, trains it the same way, merges the
#    profiles (merge-fdata) and has llvm-bolt lay out its blocks and functions by them
#    (ext-tsp, cdsort, hot/cold split, identical code folding).
# The result is target/pgo/mcplb; the PGO-only build stays in
# target/pgo/x86_64-unknown-linux-gnu/release/mcplb.
#
# Settings (environment): BOLT (0: PGO only, the default; 1: the BOLT step too), TRAIN_SECS (seconds per
# training step, default 8), PROFDATA (default llvm-profdata-19), LLVM_BOLT and MERGE_FDATA
# (default llvm-bolt-19, merge-fdata-19), LOAD_BIN (an mcplb-load to train with instead of
# building target/release/mcplb-load), GEN_BIN (an instrumented mcplb already built, e.g. by an
# earlier run: target/pgo-gen/x86_64-unknown-linux-gnu/release/mcplb), PGO_BIN (a profiled
# build already made with BOLT=1, e.g. target/pgo/x86_64-unknown-linux-gnu/release/mcplb: only
# the BOLT step runs), NO_INSTALL=1 never calls apt-get.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SAY_TAG=pgo
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
no_args_or_help "${BASH_SOURCE[0]}" "$@"

TRIPLE=x86_64-unknown-linux-gnu
BOLT=${BOLT:-0}
PROFDATA=${PROFDATA:-llvm-profdata-19}
LLVM_BOLT=${LLVM_BOLT:-llvm-bolt-19}
MERGE_FDATA=${MERGE_FDATA:-merge-fdata-19}
GEN_DIR=$ROOT/target/pgo-gen
OUT_DIR=$ROOT/target/pgo
PROF_DIR=$ROOT/target/pgo-profiles
BOLT_DIR=$ROOT/target/bolt-profiles
export CARGO_INCREMENTAL=0

install_missing "$PROFDATA:llvm-19"
if [[ $BOLT == 1 ]]; then install_missing "$LLVM_BOLT:bolt-19" "$MERGE_FDATA:bolt-19"; fi

if [[ -z ${LOAD_BIN:-} ]]; then
    say "building mcplb-load (release)"
    cargo build --release -q --locked -p mcplb-load
    export LOAD_BIN=$ROOT/target/release/mcplb-load
fi
shopt -s nullglob

# Steps 1 and 2: sets PGO_BIN.
pgo() {
    rm -rf "$PROF_DIR"
    mkdir -p "$PROF_DIR"
    if [[ -z ${GEN_BIN:-} ]]; then
        # --target: the flags reach mcplb's crates only, not build scripts and proc macros.
        say "building mcplb instrumented ($GEN_DIR)"
        RUSTFLAGS="-Cprofile-generate=$PROF_DIR" \
            cargo build --release -q --locked -p mcplb --target "$TRIPLE" --target-dir "$GEN_DIR"
        GEN_BIN=$GEN_DIR/$TRIPLE/release/mcplb
    fi
    t_gen=$SECONDS

    say "training the instrumented mcplb"
    LLVM_PROFILE_FILE="$PROF_DIR/mcplb-%p-%m.profraw" SAY_TAG=pgo-train "$ROOT/scripts/pgo-train.sh" "$GEN_BIN"
    local raw=("$PROF_DIR"/*.profraw)
    [[ ${#raw[@]} -gt 0 ]] || { say "no .profraw in $PROF_DIR: the instrumented mcplb wrote no profile"; exit 1; }
    "$PROFDATA" merge -o "$PROF_DIR/merged.profdata" "${raw[@]}"
    say "merged ${#raw[@]} raw profile(s) into $PROF_DIR/merged.profdata"
    t_train=$SECONDS

    say "building mcplb with the profile ($OUT_DIR)"
    local flags="-Cprofile-use=$PROF_DIR/merged.profdata -Clink-arg=-Wl,-z,keep-text-section-prefix"
    # BOLT needs the static relocations to move code.
    if [[ $BOLT == 1 ]]; then flags+=" -Clink-arg=-Wl,--emit-relocs"; fi
    RUSTFLAGS=$flags cargo build --release -q --locked -p mcplb --target "$TRIPLE" --target-dir "$OUT_DIR"
    PGO_BIN=$OUT_DIR/$TRIPLE/release/mcplb
}

# Step 3: PGO_BIN laid out by BOLT into $OUT_DIR/mcplb.
bolt() {
    rm -rf "$BOLT_DIR"
    mkdir -p "$BOLT_DIR"
    # Called by its real path: llvm-bolt looks for its runtime (libbolt_rt_instr.a) in ../lib
    # of the path it was called by, and Debian's /usr/bin/llvm-bolt-19 is a link.
    local tool
    tool=$(realpath "$(command -v "$LLVM_BOLT")")
    say "instrumenting it with llvm-bolt"
    "$tool" "$PGO_BIN" -o "$BOLT_DIR/mcplb.instr" -instrument \
        -instrumentation-file="$BOLT_DIR/mcplb.fdata" -instrumentation-file-append-pid \
        >"$BOLT_DIR/instrument.log" 2>&1 || { tail -n 20 "$BOLT_DIR/instrument.log" >&2; exit 1; }
    say "training the BOLT-instrumented mcplb"
    SAY_TAG=bolt-train "$ROOT/scripts/pgo-train.sh" "$BOLT_DIR/mcplb.instr"
    local fdata=("$BOLT_DIR"/mcplb.fdata*)
    [[ ${#fdata[@]} -gt 0 ]] || { say "no mcplb.fdata* in $BOLT_DIR: the instrumented mcplb wrote no profile"; exit 1; }
    "$MERGE_FDATA" "${fdata[@]}" >"$BOLT_DIR/merged.fdata" 2>"$BOLT_DIR/merge.log"
    say "merged ${#fdata[@]} profile(s); laying out the PGO build with llvm-bolt"
    "$LLVM_BOLT" "$PGO_BIN" -o "$OUT_DIR/mcplb.new" -data="$BOLT_DIR/merged.fdata" \
        -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
        -split-eh -icf=1 -use-gnu-stack -dyno-stats \
        >"$BOLT_DIR/optimize.log" 2>&1 || { tail -n 20 "$BOLT_DIR/optimize.log" >&2; exit 1; }
    mv "$OUT_DIR/mcplb.new" "$OUT_DIR/mcplb"
    grep -E 'BOLT-INFO: (basic block reordering|[0-9]+ out of [0-9]+ functions in the binary)' \
        "$BOLT_DIR/optimize.log" | sed 's/^/[pgo]   /' >&2 || true
}

t0=$SECONDS
t_gen=$t0 t_train=$t0
if [[ -n ${PGO_BIN:-} ]]; then
    [[ $BOLT == 1 ]] || { say "PGO_BIN is for the BOLT step: set BOLT=1"; exit 2; }
    PGO_BIN=$(realpath "$PGO_BIN")
else
    pgo
fi
t_use=$SECONDS
mkdir -p "$OUT_DIR"
if [[ $BOLT == 1 ]]; then
    bolt
else
    cp "$PGO_BIN" "$OUT_DIR/mcplb"
fi
t_bolt=$SECONDS
say "done: $OUT_DIR/mcplb ($(du -m "$OUT_DIR/mcplb" | cut -f1) MB; instrumented build $((t_gen - t0)) s," \
    "training $((t_train - t_gen)) s, profiled build $((t_use - t_train)) s, BOLT $((t_bolt - t_use)) s)"
