#!/usr/bin/env bash
# The algorithms side by side: accuracy (in-memory twin, fake clock), Redis commands a
# decision and memory a key (see ratelimit-core/examples/algorithms.rs for the definitions).
#
#   scripts/compare-algorithms.sh
#
# Starts a throwaway redis-server on a free port, and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/lib/throwaway-redis.sh
start_throwaway_redis
trap stop_throwaway_redis EXIT

cargo build --release -q -p ratelimit-core --example algorithms
echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
./target/release/examples/algorithms "redis://127.0.0.1:$REDIS_PORT"
