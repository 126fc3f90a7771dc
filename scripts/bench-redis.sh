#!/usr/bin/env bash
# Measures `allow` on Redis against redis-benchmark running the same script on the same server,
# in one run: one caller in sequence (`-c 1`), 50 at once (`-c 50`, no pipelining), and 50 at
# once with 16 calls pipelined each (`-c 50 -P 16`: what one Redis core does with our script when
# the client costs nothing, the ceiling the limiter's own pipelines are held to).
#
#   scripts/bench-redis.sh [requests] [concurrency]
#
# Runs itself again under `with-redis` (load/src/bin/with-redis.rs), which starts a throwaway
# redis-server (the test harness's) on a free port, sets THROWAWAY_REDIS_PORT and
# THROWAWAY_REDIS_URL, and stops the server at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requests=${1:-100000}
concurrency=${2:-50}
if [ -z "${THROWAWAY_REDIS_PORT:-}" ]; then
  cargo build --release -q -p ratelimit-load --bin with-redis --bin redis-throughput
  exec "${CARGO_TARGET_DIR:-target}/release/with-redis" scripts/bench-redis.sh "$@"
fi
port=$THROWAWAY_REDIS_PORT
# The script as the limiter sends it: the preludes, then the body (`assemble!` in
# ratelimit-core/src/scripts.rs).
sha=$(redis-cli -p "$port" script load "$(cat lua/prelude/clock.lua lua/prelude/binding.lua \
  lua/prelude/arguments.lua lua/sliding_window.lua)")
window_us=1000000
limit=1000000
# The script must take the allowed path (first field 1) before it is measured: a script that
# fails would be timed as fast as its error.
first=$(redis-cli -p "$port" evalsha "$sha" 1 'bench:{check}:sw' allow 1 check "$limit" "$window_us" | head -1)
if [ "$first" != 1 ]; then
  echo "sliding_window.lua as assembled here does not allow a first call: $first" >&2
  exit 1
fi

echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
echo "# redis-benchmark, EVALSHA sliding_window.lua (same key, limit $limit per 1s, random nonces)"
for run in "1" "$concurrency" "$concurrency -P 16"; do
  read -r c pipelining <<<"$run"
  n=$requests; [ "$c" = 1 ] && n=$((requests / 4))
  redis-cli -p "$port" del 'bench:{k}:sw' >/dev/null
  # shellcheck disable=SC2086 # `-P 16` is two words on purpose
  rps=$(redis-benchmark -p "$port" -n "$n" -c "$c" ${pipelining:-} -r 100000000 -q \
    EVALSHA "$sha" 1 'bench:{k}:sw' allow 1 __rand_int__ "$limit" "$window_us" | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
  printf '%-50s %s\n' "redis-benchmark -c $c ${pipelining:-}" "$rps"
done
redis-cli -p "$port" del 'bench:{k}:sw' >/dev/null
"${CARGO_TARGET_DIR:-target}/release/redis-throughput" --redis-url "$THROWAWAY_REDIS_URL" --concurrency "$concurrency" --requests "$requests"

# The same for the multi-window script: two windows (1,000,000 a minute and an hour), one sorted
# set; redis-benchmark with 16 calls pipelined on each of 50 connections, then the limiter.
multi=$(redis-cli -p "$port" script load "$(cat lua/prelude/clock.lua lua/prelude/binding.lua \
  lua/prelude/arguments.lua lua/multi_window.lua)")
first=$(redis-cli -p "$port" evalsha "$multi" 1 'bench:{check}:sw' allow 1 check "$limit" 60000000 "$limit" 3600000000 | head -1)
if [ "$first" != 1 ]; then
  echo "multi_window.lua as assembled here does not allow a first call: $first" >&2
  exit 1
fi
echo "# redis-benchmark, EVALSHA multi_window.lua (same key, limit $limit per 1m and per 1h, random nonces)"
redis-cli -p "$port" del 'bench:{k}:sw' >/dev/null
rps=$(redis-benchmark -p "$port" -n "$requests" -c "$concurrency" -P 16 -r 100000000 -q \
  EVALSHA "$multi" 1 'bench:{k}:sw' allow 1 __rand_int__ "$limit" 60000000 "$limit" 3600000000 | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
printf '%-50s %s\n' "redis-benchmark -c $concurrency -P 16" "$rps"
redis-cli -p "$port" del 'bench:{k}:sw' >/dev/null
"${CARGO_TARGET_DIR:-target}/release/redis-throughput" --redis-url "$THROWAWAY_REDIS_URL" --concurrency "$concurrency" --requests "$requests" --multi-window
