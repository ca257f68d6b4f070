#!/usr/bin/env bash
# The release artifact of mcplb: the build users run, profile-guided (scripts/build-pgo.sh,
# its training in scripts/pgo-train.sh), packed with mcplb-load.
#
#   scripts/release.sh              # -> dist/mcplb-VERSION-x86_64-unknown-linux-gnu.tar.gz
#   BOLT=1 scripts/release.sh       # PGO, then laid out by BOLT (not the default: on the quiet
#                                   # machine it did not beat PGO alone, 0.97-1.13x its CPU per
#                                   # call: bench/results/2026-12-06-one-call-session6-bolt.md)
#   OPTIMISE=0 scripts/release.sh   # a plain `cargo build --release` (no training)
#
# The tarball holds mcplb, mcplb-load (a plain release build: the load generator and mock), the
# README and LICENSE when present, BUILD-INFO (the commit, rustc, LLVM and BOLT versions, the
# flags, the training) and SHA256SUMS; the .tar.gz has a .sha256 beside it. The binaries keep
# their symbols (perf and backtraces name functions) but not the debug line tables
# (--strip-debug: a fifth of the size). The same sources, toolchain and training give the same
# code layout up to the counts a timed training run gathers (not bit for bit).
#
# Settings (environment): OPTIMISE (1), BOLT (0), DIST (dist), TRAIN_SECS and the rest of
# scripts/build-pgo.sh's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SAY_TAG=release
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
no_args_or_help "${BASH_SOURCE[0]}" "$@"

TRIPLE=x86_64-unknown-linux-gnu
OPTIMISE=${OPTIMISE:-1}
export BOLT=${BOLT:-0}
DIST=${DIST:-$ROOT/dist}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $VERSION ]] || { say "no version in Cargo.toml's [workspace.package]"; exit 1; }
NAME=mcplb-$VERSION-$TRIPLE
export CARGO_INCREMENTAL=0
install_missing objcopy:binutils

say "building mcplb-load (release)"
cargo build --release -q --locked -p mcplb-load
export LOAD_BIN=$ROOT/target/release/mcplb-load
if [[ $OPTIMISE == 1 ]]; then
    "$ROOT/scripts/build-pgo.sh"
    BIN=$ROOT/target/pgo/mcplb
    if [[ $BOLT == 1 ]]; then kind="PGO + BOLT"; else kind="PGO"; fi
else
    say "building mcplb (plain release)"
    cargo build --release -q --locked -p mcplb
    BIN=$ROOT/target/release/mcplb
    kind="plain (no profile)"
fi

STAGE=$DIST/$NAME
rm -rf "$STAGE" "$STAGE.tar.gz" "$STAGE.tar.gz.sha256"
mkdir -p "$STAGE"
objcopy --strip-debug "$BIN" "$STAGE/mcplb"
objcopy --strip-debug "$LOAD_BIN" "$STAGE/mcplb-load"
for f in README.md LICENSE LICENSE-APACHE; do [[ -f $f ]] && cp "$f" "$STAGE/"; done
"$STAGE/mcplb" --version >/dev/null || { say "the packed mcplb does not run"; exit 1; }
{
    echo "mcplb $VERSION ($TRIPLE), build: $kind"
    if commit=$(git rev-parse HEAD 2>/dev/null); then
        git diff --quiet HEAD || commit+=" (with uncommitted changes)"
    else
        commit="unknown (not a git checkout)"
    fi
    echo "commit: $commit"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    rustc -vV
    if [[ $OPTIMISE == 1 ]]; then
        echo
        echo "profile: ${PROFDATA:-llvm-profdata-19}: $("${PROFDATA:-llvm-profdata-19}" --version | grep -m1 -i version)"
        if [[ $BOLT == 1 ]]; then
            echo "layout: ${LLVM_BOLT:-llvm-bolt-19}: $("${LLVM_BOLT:-llvm-bolt-19}" --version | grep -m1 -i version)"
        fi
        echo "training: scripts/pgo-train.sh, ${TRAIN_SECS:-8} s a step (see its header for the mixes)"
    fi
} >"$STAGE/BUILD-INFO"
(cd "$STAGE" && sha256sum mcplb mcplb-load >SHA256SUMS)
tar -C "$DIST" --owner=0 --group=0 --numeric-owner -czf "$STAGE.tar.gz" "$NAME"
(cd "$DIST" && sha256sum "$NAME.tar.gz" >"$NAME.tar.gz.sha256")
say "done: $STAGE.tar.gz ($kind; mcplb $(du -m "$STAGE/mcplb" | cut -f1) MB)"
