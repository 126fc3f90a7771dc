#!/usr/bin/env bash
# Measures the local cache's accuracy and its savings in Redis calls: four limiters sharing one
# Redis and one hot key, steady and bursty loads, no cache / exact cache / leases of 5 and 20
# (see ratelimit-core/examples/cache_accuracy.rs for the definitions), then an abusive client.
#
#   scripts/cache-accuracy.sh [seconds per run]
#
# Starts a throwaway redis-server on a free port, and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-10}
. scripts/lib/throwaway-redis.sh
start_throwaway_redis
trap stop_throwaway_redis EXIT
port=$REDIS_PORT

cargo build --release -q -p ratelimit-core --example cache_accuracy
echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
./target/release/examples/cache_accuracy "redis://127.0.0.1:$port" "$seconds"
