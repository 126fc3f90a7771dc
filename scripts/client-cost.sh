#!/usr/bin/env bash
# What the limiter's own process spends on one Redis decision, counted in CPU instructions.
#
#   scripts/client-cost.sh [--before-bin DIR] [--keys N] [--seconds S]
#
# Runs `peer-workload` (50 callers, a fixed window, keys k0..k{N-1} in turn, default 10,000; the
# exactness burst after it) under `valgrind --tool=callgrind` against a throwaway redis-server,
# and divides every instruction the process executed (its start included, about 2%) by its
# Redis decisions (the calls of `ratelimit_core::scripts::command`, one a decision). Under
# valgrind the process runs on one core at a fraction of its speed, so the figure says nothing
# of throughput: it is the work a decision costs the client, and repeats to about 2% on a
# busy machine, where a timed comparison moves by a third.
#
# `--before-bin DIR` counts the `peer-workload` in DIR too (a release build of another revision,
# for example `git worktree add --detach /tmp/before REV` and
# `(cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p ratelimit-load --bin peer-workload)`).
#
# Needs valgrind (apt-get install valgrind) and redis-server. Runs itself again under
# `with-redis` (load/src/bin/with-redis.rs): a throwaway redis-server, stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

before_bin=""
keys=10000
seconds=10
while [ $# -gt 0 ]; do
  case $1 in
    --before-bin) before_bin=$(cd "$2" && pwd); shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
[ -z "$before_bin" ] || [ -x "$before_bin/peer-workload" ] || {
  echo "no peer-workload in $before_bin" >&2
  exit 1
}

if [ -z "${THROWAWAY_REDIS_URL:-}" ]; then
  cargo build --release -q -p ratelimit-load --bin with-redis --bin peer-workload
  exec ./target/release/with-redis scripts/client-cost.sh \
    ${before_bin:+--before-bin "$before_bin"} --keys "$keys" --seconds "$seconds"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Instructions a decision of the `peer-workload` at $2, labelled $1.
count() {
  local label=$1 binary=$2
  redis-cli -u "$THROWAWAY_REDIS_URL" FLUSHALL >/dev/null
  valgrind --tool=callgrind --callgrind-out-file="$out/$label" "$binary" \
    --redis-url "$THROWAWAY_REDIS_URL" --keys "$keys" --duration "${seconds}s" \
    >"$out/$label.json" 2>"$out/$label.err"
  local total decisions
  total=$(callgrind_annotate "$out/$label" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  decisions=$(callgrind_annotate --inclusive=yes --tree=calling "$out/$label" 2>/dev/null |
    grep -E '> +[?]+:ratelimit_core::scripts::command \(' | head -1 |
    sed -E 's/.*\(([0-9,]+)x\).*/\1/' | tr -d ,)
  if [ -z "$decisions" ] || [ "$decisions" -eq 0 ]; then
    echo "$label: no decision counted (is $binary a release build with symbols?)" >&2
    exit 1
  fi
  printf '%-12s %14s instructions, %7s decisions: %6d a decision\n' \
    "$label" "$total" "$decisions" $((total / decisions))
}

echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); peer-workload --keys $keys, ${seconds}s under callgrind"
count "this build" ./target/release/peer-workload
[ -z "$before_bin" ] || count before "$before_bin/peer-workload"
