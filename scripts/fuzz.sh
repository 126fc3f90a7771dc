#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time; fails on the first crash.
#
#   scripts/fuzz.sh [seconds per target, default 60]
#
# Works on a stable toolchain: cargo-fuzz passes -Z flags (sanitizer, coverage), which
# RUSTC_BOOTSTRAP=1 unlocks. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
    ''|*[!0-9]*) echo "usage: $0 [seconds per target]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
targets=(config_yaml client_ip identity_keys)

echo "==> building fuzz targets"
cargo fuzz build

failed=()
for t in "${targets[@]}"; do
    echo "==> fuzzing $t for ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    if ! cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -print_final_stats=1; then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "==> crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "==> all targets ran ${secs}s without a crash"
