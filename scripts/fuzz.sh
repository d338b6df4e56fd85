#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds (default 10) without a sanitizer
# (the smoke run of the test suite), or with one: SANITIZER=address.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Only the stable toolchain exists here; RUSTC_BOOTSTRAP lets cargo-fuzz use
# the instrumentation flags it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
sanitizer=${SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
# One target directory for both fuzz crates: they share most dependencies.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/fuzz}
for dir in proto/fuzz ha-node/fuzz; do
    [ -d "$dir" ] || continue
    targets=("$@")
    if [ ${#targets[@]} -eq 0 ]; then
        mapfile -t targets < <(cd "$dir/.." && cargo fuzz list --fuzz-dir fuzz)
    fi
    for t in "${targets[@]}"; do
        [ -f "$dir/fuzz_targets/$t.rs" ] || continue
        seeds="$dir/seeds/$t"
        corpus="$dir/corpus/$t"
        mkdir -p "$corpus"
        # Seeds live in git (small, hand-made); the growing corpus does not.
        [ -d "$seeds" ] && cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
        echo "--- fuzz $dir $t (${secs}s, sanitizer $sanitizer)"
        log=$(mktemp)
        rc=0
        (cd "$dir/.." && cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" "$t" "fuzz/corpus/$t" -- \
            -max_total_time="$secs" -print_final_stats=1) >"$log" 2>&1 || rc=$?
        grep -E 'stat::number_of_executed_units|stat::new_units_added|panicked|SUMMARY|crash-' "$log" || true
        # cargo fuzz exits non-zero on a crash (and leaves an artifact) or
        # when the target does not build: both fail the run.
        if [ "$rc" != 0 ]; then
            tail -40 "$log" >&2
            echo "error: fuzz target $t failed (exit $rc); artifacts in $dir/artifacts/$t" >&2
            exit 1
        fi
        rm -f "$log"
    done
done
