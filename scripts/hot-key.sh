#!/usr/bin/env bash
# One hot key on Redis: 50 concurrent callers on a single key, this build against another, on
# the same throwaway Redis, interleaved, for the algorithms that decide a pipeline's calls on
# one key in one script call (every algorithm, one window).
#
#   scripts/hot-key.sh --before-bin DIR [--only ALGORITHM] [--windows 2] [rounds, default 3]
#
# DIR holds `peer-workload` built from another revision, for example
#   git worktree add --detach /tmp/before REV
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p ratelimit-load --bin peer-workload)
# A peer-workload without `--algorithm` and `--windows` (one from before the batches, such as
# b28592c's, the last that sent one script call a decision) runs the fixed window of one window
# only, so the script then takes `--only fixed_window` and no `--windows 2`. `--windows 2` adds a
# window of as many calls an hour (for the sliding log, the multi-window log).
#
# Each run is `peer-workload --keys 1 --callers 50 --duration 3s --algorithm A` (a window of
# 10,000,000 a minute (`--limit`; a build without it runs 1,000,000 a minute): every call
# allowed and written; a faster run would reach the limit, and this build's `peer-workload`
# fails when a call of its throughput run is denied: one of an older revision does not, so
# the script stops when that side's rate could have reached 1,000,000),
# Redis flushed before each; then the
# exactness check (200 calls at a limit of 100, exactly 100 must pass). Prints decisions/s of
# both builds, their ratio and its median, what this build's run printed about its batches and
# the Redis microseconds a decision of each (`INFO commandstats`; a revision that does not
# print them shows `?`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=("$@")
before_bin=""
rounds=3
windows=1
algorithms=(fixed_window sliding_window token_bucket sliding_counter)
while [ $# -gt 0 ]; do
  case $1 in
    --before-bin) before_bin=$2; shift 2 ;;
    --only) algorithms=("$2"); shift 2 ;;
    --windows) windows=$2; shift 2 ;;
    *) rounds=$1; shift ;;
  esac
done
if [ -z "$before_bin" ] || [ ! -x "$before_bin/peer-workload" ]; then
  echo "hot-key: --before-bin DIR with a peer-workload in it is required" >&2; exit 2
fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "rounds must be a positive integer, not '$rounds'" >&2; exit 2; }
bin=${CARGO_TARGET_DIR:-target}/release

if [ -z "${THROWAWAY_REDIS_PORT:-}" ]; then
  command -v redis-cli >/dev/null || { echo "hot-key: redis-cli is missing" >&2; exit 1; }
  cargo build --release -q -p ratelimit-load --bin with-redis --bin peer-workload
  exec "$bin/with-redis" scripts/hot-key.sh "${args[@]}"
fi

seconds=3
before_shaped=yes
if ! "$before_bin/peer-workload" --help | grep -q -- --algorithm; then
  if [ "${algorithms[*]}" != fixed_window ] || [ "$windows" != 1 ]; then
    echo "hot-key: $before_bin/peer-workload has no --algorithm: give --only fixed_window" >&2
    exit 2
  fi
  before_shaped=""
fi
# A build that takes `--limit` runs on windows of 10,000,000 calls: at 1,000,000 a minute, a
# run of 3 s reaches the limit above 333,000 calls a second, which would cap the ratio to a
# build from before the batches (about 140,000 a second) at 2.4x.
before_limited=""
"$before_bin/peer-workload" --help | grep -q -- --limit && before_limited=yes
run() { # DIR ALGORITHM: prints the JSON line; this build's notes go to $notes
  local shape=(--algorithm "$2" --windows "$windows")
  [ "$1" = "$bin" ] || [ -n "$before_shaped" ] || shape=()
  [ "$1" != "$bin" ] && [ -z "$before_limited" ] || shape+=(--limit 10000000)
  redis-cli -p "$THROWAWAY_REDIS_PORT" flushall >/dev/null
  "$1/peer-workload" --redis-url "$THROWAWAY_REDIS_URL" --keys 1 --callers 50 \
    --duration "${seconds}s" "${shape[@]}" 2>"$notes" || { cat "$notes" >&2; return 1; }
}
rate() { sed -E 's/.*"decisions_per_sec":([0-9.]+).*/\1/' <<<"$1"; }
exact() { sed -E 's/.*"exact_pass":([0-9]+).*/\1/' <<<"$1"; }
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

notes=$(mktemp)
trap 'rm -f "$notes"' EXIT
echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), Redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2); one key, 50 callers, $seconds s a run, $windows window(s)"
status=0
for algorithm in "${algorithms[@]}"; do
  ratios=()
  for round in $(seq "$rounds"); do
    # Which build runs first alternates: the second of two runs can gain or lose by its place.
    sides="now before"
    ((round % 2)) || sides="before now"
    for side in $sides; do
      if [ "$side" = now ]; then
        now_line=$(run "$bin" "$algorithm")
        now_notes=$(grep -oE '[0-9]+ batches decided.*' "$notes" || true)
      else
        before_line=$(run "$before_bin" "$algorithm")
        before_usec=$(grep -oE 'Redis spent [0-9.]+' "$notes" | grep -oE '[0-9.]+$' || echo "?")
      fi
    done
    # An older peer-workload does not refuse a run that reached its limit: its rate then
    # counts local denials. 1,000,000 calls in a run is where that begins.
    if awk -v b="$(rate "$before_line")" -v s="$seconds" 'BEGIN { exit !(b * s >= 1000000) }'; then
      echo "hot-key: the other build ran $(rate "$before_line")/s, enough to reach its limit in $seconds s: its rate counts denials" >&2
      exit 1
    fi
    ratio=$(awk -v a="$(rate "$now_line")" -v b="$(rate "$before_line")" 'BEGIN { printf "%.2f", a / b }')
    ratios+=("$ratio")
    printf '%-15s round %s: this build %8.0f/s, before %8.0f/s, %sx; exact %s and %s; %s (before: %s µs)\n' \
      "$algorithm" "$round" "$(rate "$now_line")" "$(rate "$before_line")" "$ratio" \
      "$(exact "$now_line")" "$(exact "$before_line")" "$now_notes" "$before_usec"
    if [ "$(exact "$now_line")" != 100 ]; then
      echo "hot-key: this build let $(exact "$now_line") of 200 calls pass, not 100" >&2
      status=1
    fi
  done
  echo "$algorithm: median this build / before over $rounds rounds: $(median "${ratios[@]}")x"
done
exit "$status"
