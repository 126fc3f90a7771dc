#!/usr/bin/env bash
# The sliding logs over 10,000 distinct keys against redis-benchmark's pipelined ceiling for the
# same script: `bench-redis.sh` measures one key, where the limiter decides a pipeline's calls in
# one script call; here every call is its own script call, as for a crowd of clients.
#
#   scripts/bench-redis-keys.sh [rounds, default 3]
#
# Each round, per script (the one-window log, then the log of two windows, 1m + 1h), on one
# throwaway Redis, FLUSHALL before each side:
#   redis-benchmark -n 300000 -c 50 -P 16 -r 10000 EVALSHA <sha> 1 rl:{p:__rand_int__}:sw allow 1 <nonce> 1000000 60000000 [1000000 3600000000]
# (the script as the limiter assembles it, the limiter's arguments, a random key of 10,000 and a
# random nonce a call), then `peer-workload --algorithm sliding_window [--windows 2]` (50
# callers, keys k0..k9999 in turn, 1,000,000 a minute, the default configuration, 5 s). Prints
# each side's calls a second and their ratio; the summary gives the median ratio per script.
#
# Runs itself again under `with-redis` (load/src/bin/with-redis.rs), which starts a throwaway
# redis-server (the test harness's) on a free port and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${1:-3}
target=${CARGO_TARGET_DIR:-target}
if [ -z "${THROWAWAY_REDIS_PORT:-}" ]; then
  cargo build --release -q -p ratelimit-load --bin with-redis --bin peer-workload
  exec "$target/release/with-redis" scripts/bench-redis-keys.sh "$@"
fi
port=$THROWAWAY_REDIS_PORT
cli() { redis-cli -p "$port" "$@"; }

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2), load average:$(uptime | sed 's/.*load average://')"
for windows in 1 2; do
  body=sliding_window.lua
  args="allow 1 __rand_int____rand_int__ 1000000 60000000"
  if [ "$windows" = 2 ]; then
    body=multi_window.lua
    args="$args 1000000 3600000000"
  fi
  sha=$(cli script load "$(cat lua/prelude/clock.lua lua/prelude/binding.lua lua/prelude/arguments.lua "lua/$body")")
  # The script must take the allowed path before it is measured (an error is fast too).
  # shellcheck disable=SC2086
  first=$(cli evalsha "$sha" 1 'rl:{check}:sw' ${args//__rand_int__/7} | head -1)
  if [ "$first" != 1 ]; then
    echo "$body as assembled here does not allow a first call: $first" >&2
    exit 1
  fi
  ratios=""
  for round in $(seq "$rounds"); do
    cli flushall >/dev/null
    # shellcheck disable=SC2086
    ceiling=$(redis-benchmark -p "$port" -n 300000 -c 50 -P 16 -r 10000 -q \
      EVALSHA "$sha" 1 'rl:{p:__rand_int__}:sw' $args | tr '\r' '\n' |
      grep -Eo '[0-9.]+ requests per second' | tail -1 | cut -d' ' -f1)
    cli flushall >/dev/null
    ours=$("$target/release/peer-workload" --redis-url "redis://127.0.0.1:$port" \
      --algorithm sliding_window --windows "$windows" | grep -Eo '"decisions_per_sec":[0-9.]+' | cut -d: -f2)
    ratio=$(echo "$ours / $ceiling" | bc -l)
    ratios+="$ratio "
    printf '%s, round %d: limiter %.0f/s, redis-benchmark -P 16 %.0f/s, %.2fx\n' \
      "$body" "$round" "$ours" "$ceiling" "$ratio"
  done
  printf '%s: median limiter / redis-benchmark -P 16 over %d rounds: %.2fx\n' \
    "$body" "$rounds" "$(echo "$ratios" | median)"
done
