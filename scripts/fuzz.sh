#!/usr/bin/env bash
# Short cargo-fuzz run of one target of a crate's fuzz project.
#
#   scripts/fuzz.sh FUZZ_DIR TARGET TARGET_DIR [SECONDS]   (default 20 s)
#
# Installs cargo-fuzz if missing. Only stable Rust is installed here, so
# RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz passes
# (-Zsanitizer=..., -Cpasses=sancov-module). The AddressSanitizer build is
# tried first; if it cannot be built, the run falls back to `-s none`
# (coverage-guided, no sanitizer). Seeds come from FUZZ_DIR/seeds/TARGET.
set -euo pipefail

fuzz_dir="$(cd "$1" && pwd)"
target="$2"
target_dir="${CARGO_FUZZ_TARGET_DIR:-$3}"
seconds="${4:-20}"
cd "$fuzz_dir"

work="$target_dir/corpus/$target"
artifacts="$target_dir/artifacts/$target/"
mkdir -p "$work" "$artifacts"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz ..." >&2
    cargo install --locked -j2 cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
run() {
    cargo fuzz run "$@" --target-dir "$target_dir" "$target" \
        "$work" "seeds/$target" -- \
        -max_total_time="$seconds" -artifact_prefix="$artifacts"
}

if cargo fuzz build --target-dir "$target_dir" "$target" >/dev/null 2>&1; then
    run
else
    echo "sanitizer build failed; fuzzing without sanitizer (-s none)" >&2
    run -s none
fi
