#!/usr/bin/env bash
# Measures `allow` on Redis against redis-benchmark running the same script on the same server,
# in one run: one caller in sequence (`-c 1`) and 50 at once (`-c 50`, no pipelining).
#
#   scripts/bench-redis.sh [requests] [concurrency]
#
# Starts a throwaway redis-server on a free port, and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requests=${1:-100000}
concurrency=${2:-50}
. scripts/lib/throwaway-redis.sh
start_throwaway_redis
trap stop_throwaway_redis EXIT
port=$REDIS_PORT

cargo build --release -q -p ratelimit-core --example redis_throughput
sha=$(redis-cli -p "$port" script load "$(cat lua/sliding_window.lua)")
window_us=1000000
limit=1000000

echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
echo "# redis-benchmark, EVALSHA sliding_window.lua (same key, limit $limit per 1s, random nonces)"
for c in 1 "$concurrency"; do
  n=$requests; [ "$c" = 1 ] && n=$((requests / 4))
  rps=$(redis-benchmark -p "$port" -n "$n" -c "$c" -r 100000000 -q \
    EVALSHA "$sha" 1 'bench:{k}:sw' allow 1 __rand_int__ "$limit" "$window_us" | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
  printf '%-50s %s\n' "redis-benchmark -c $c" "$rps"
done
redis-cli -p "$port" del 'bench:{k}:sw' >/dev/null
./target/release/examples/redis_throughput "redis://127.0.0.1:$port" "$concurrency" "$requests"
