#!/usr/bin/env bash
# Line coverage of ratelimit-core, from its own tests and the integration suites in
# ratelimit-tests (tests/), which start their own throwaway redis-server processes.
#
#   scripts/coverage.sh [threshold]      # threshold in percent, default 95
#
# Installs cargo-tarpaulin on first use (about four minutes), builds into its own
# target/tarpaulin (so it does not invalidate target/debug) and counts only lines under
# ratelimit-core/src (unit-test modules and benches excluded). Uses the LLVM
# source-based engine: the ptrace engine is slow with the suites' multi-threaded tokio
# runtimes and child processes. Set COVERAGE_ENGINE=ptrace to try it anyway.
# Reports (HTML, LCOV, JSON) land in target/tarpaulin/report; exits non-zero if the
# figure is below the threshold or tarpaulin fails to produce one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

threshold=${1:-95}
engine=${COVERAGE_ENGINE:-llvm}
out=target/tarpaulin/report

if ! cargo tarpaulin --version >/dev/null 2>&1; then
    cargo install cargo-tarpaulin --locked
fi
command -v redis-server >/dev/null || { echo "redis-server is required (see scripts/test.sh)" >&2; exit 1; }

# Tarpaulin builds with full debug information (-Cdebuginfo=2) unless told otherwise; the LLVM
# engine reads the coverage maps the instrumented binaries carry, not their debug information,
# which would only triple the size of target/tarpaulin.
debuginfo=
[ "$engine" = llvm ] && debuginfo=--rustflags=-Cdebuginfo=0

mkdir -p "$out"
log="$out/tarpaulin.log"
status=0
# --no-fail-fast: a flaky test (timing under instrumentation) still leaves a figure;
# tarpaulin's own exit status is reported below. --implicit-test-threads: by default
# tarpaulin exports RUST_TEST_THREADS, which the config suite's re-executed child test
# inherits, changing libtest's output layout that environment_variable_overrides_the_file
# parses.
cargo tarpaulin \
    --engine "$engine" \
    $debuginfo \
    --target-dir target/tarpaulin --skip-clean \
    -p ratelimit-core -p ratelimit-tests \
    --include-files 'ratelimit-core/src/*' \
    --exclude-files 'ratelimit-core/benches/*' \
    --timeout 900 --no-fail-fast --implicit-test-threads \
    --out Html --out Lcov --out Json --output-dir "$out" \
    2>&1 | tee "$log" || status=$?

pct=$(grep -Eo '^[0-9.]+% coverage' "$log" | tail -1 | cut -d% -f1)
if [ -z "$pct" ]; then
    echo "coverage: tarpaulin produced no figure (exit $status); see $log" >&2
    exit 1
fi
[ "$status" -eq 0 ] || echo "coverage: warning: tarpaulin exited $status (test failures?); see $log" >&2
echo "ratelimit-core line coverage: ${pct}% (threshold ${threshold}%)"
awk -v p="$pct" -v t="$threshold" 'BEGIN { exit !(p + 0 >= t + 0) }' || {
    echo "coverage: ${pct}% is below ${threshold}%" >&2
    exit 1
}
