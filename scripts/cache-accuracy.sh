#!/usr/bin/env bash
# Measures the local cache's accuracy and its savings in Redis calls: four limiters sharing one
# Redis and one hot key, steady and bursty loads, no cache / exact cache / leases of 5 and 20
# (see load/src/bin/cache-accuracy.rs for the definitions), then an abusive client.
#
#   scripts/cache-accuracy.sh [duration of each run, default 10s]
#
# The duration is read as the configuration reads one (`10s`, `1m`; a bare number is refused).
# The program starts a throwaway redis-server (the test harness's) on a free port, and stops it
# at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=${1:-10s}
cargo build --release -q -p ratelimit-load --bin cache-accuracy
echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
./target/release/cache-accuracy --duration "$duration"
