#!/usr/bin/env bash
# Short fuzz run of cairn-tuf's metadata parser (envelope, canonical JSON,
# root/timestamp/snapshot/targets views).
#
#   crates/tuf/fuzz/run.sh [SECONDS]      (default 20)
#
# Installs cargo-fuzz if missing. Only stable Rust is installed here, so
# RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz passes
# (-Zsanitizer=..., -Cpasses=sancov-module). The AddressSanitizer build is
# tried first; if it cannot be built, the run falls back to `-s none`
# (coverage-guided, no sanitizer: the crate forbids unsafe code anyway).
set -euo pipefail

seconds="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

target_dir="${CARGO_FUZZ_TARGET_DIR:-$here/../../../target-tuf/fuzz}"
work="$target_dir/corpus/metadata"
artifacts="$target_dir/artifacts/metadata/"
mkdir -p "$work" "$artifacts"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz ..." >&2
    cargo install --locked -j2 cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
run() {
    cargo fuzz run "$@" --target-dir "$target_dir" metadata \
        "$work" seeds/metadata -- \
        -max_total_time="$seconds" -artifact_prefix="$artifacts"
}

if cargo fuzz build --target-dir "$target_dir" metadata >/dev/null 2>&1; then
    run
else
    echo "sanitizer build failed; fuzzing without sanitizer (-s none)" >&2
    run -s none
fi
