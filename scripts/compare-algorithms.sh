#!/usr/bin/env bash
# The algorithms side by side: accuracy (in-memory twin, fake clock), Redis commands a
# decision and memory a key (see load/src/bin/algorithms.rs for the definitions).
#
#   scripts/compare-algorithms.sh [--redis-url URL]
#
# The program starts a throwaway redis-server (the test harness's) on a free port, and stops it
# at the end; with --redis-url it measures on that server instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release -q -p ratelimit-load --bin algorithms
echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
./target/release/algorithms "$@"
