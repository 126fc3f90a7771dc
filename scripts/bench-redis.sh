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
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

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
