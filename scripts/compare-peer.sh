#!/usr/bin/env bash
# This limiter against rate-limiter-flexible (Node, RateLimiterRedis over ioredis) on the same
# Redis in one run: the same workload on both sides (load/src/bin/peer-workload.rs and
# load/peer/rate-limiter-flexible.js), interleaved, Redis flushed between runs.
#
#   scripts/compare-peer.sh [--before-bin DIR] [rounds, default 3]
#
# `--before-bin DIR` adds a third side to every round: the `peer-workload` in DIR, a release
# build of another revision, so that a change is measured against what it replaced in the same
# interleaved rounds; for example
#   git worktree add --detach /tmp/before REV
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p ratelimit-load --bin peer-workload)
#   scripts/compare-peer.sh --before-bin /tmp/before-target/release 5
#
# Workload: 50 concurrent callers, keys k0..k9999 taken in turn from one shared counter, a fixed
# window of 1,000,000 per 60 s (every call allowed), 5 s; decisions/s is completed calls over
# elapsed time. Then exactness: 200 concurrent calls on one fresh key, 100 per 60 s; exactly 100
# must pass (this limiter's count other than 100 fails the script; the peer's is reported as is).
#
# Needs node and npm (rate-limiter-flexible and ioredis are installed, pinned, into a throwaway
# directory removed at the end), redis-server and redis-cli. Runs itself again under `with-redis`
# (load/src/bin/with-redis.rs), which starts one throwaway redis-server (the test harness's) and
# stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=("$@")
before_bin=""
rounds=3
while [ $# -gt 0 ]; do
  case $1 in
    --before-bin) before_bin=$2; shift 2 ;;
    *) rounds=$1; shift ;;
  esac
done
if [ -n "$before_bin" ] && [ ! -x "$before_bin/peer-workload" ]; then
  echo "compare-peer: no peer-workload in $before_bin" >&2; exit 2
fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "rounds must be a positive integer, not '$rounds'" >&2; exit 2; }
peer_version=11.4.0
ioredis_version=6.0.0
duration=5s
callers=50
keys=10000
bin=${CARGO_TARGET_DIR:-target}/release

if [ -z "${THROWAWAY_REDIS_PORT:-}" ] || [ -z "${PEER_NODE_PATH:-}" ]; then
  for tool in node npm redis-cli; do
    command -v "$tool" >/dev/null || { echo "compare-peer: $tool is missing: no comparison without the peer" >&2; exit 1; }
  done
  tmpdir=$(mktemp -d)
  trap 'rm -rf "$tmpdir"' EXIT
  echo "# installing rate-limiter-flexible@$peer_version and ioredis@$ioredis_version into $tmpdir" >&2
  if ! npm install --no-save --no-audit --no-fund --loglevel error --prefix "$tmpdir" \
      "rate-limiter-flexible@$peer_version" "ioredis@$ioredis_version" >&2; then
    echo "compare-peer: cannot install rate-limiter-flexible and ioredis: no comparison without the peer" >&2
    exit 1
  fi
  cargo build --release -q -p ratelimit-load --bin with-redis --bin peer-workload
  status=0
  PEER_NODE_PATH="$tmpdir/node_modules" "$bin/with-redis" scripts/compare-peer.sh "${args[@]}" || status=$?
  exit "$status"
fi

port=$THROWAWAY_REDIS_PORT
url=$THROWAWAY_REDIS_URL

rust_run() { # [DIR of the build, default this one's]
  "${1:-$bin}/peer-workload" --redis-url "$url" --duration "$duration" --callers "$callers" --keys "$keys"
}
node_run() {
  NODE_PATH="$PEER_NODE_PATH" node load/peer/rate-limiter-flexible.js \
    --redis-url "$url" --duration "$duration" --callers "$callers" --keys "$keys"
}
# The named field of a JSON line.
field() {
  node -e 'console.log(JSON.parse(process.argv[1])[process.argv[2]])' "$1" "$2"
}

echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), Redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2), node $(node --version), rate-limiter-flexible $peer_version, ioredis $ioredis_version"
echo "# $callers callers, keys k0..k$((keys - 1)) in turn, fixed window 1000000/60s, $duration a run; exactness: 200 calls, one key, 100/60s"
printf '%-6s %-22s %14s %12s\n' round side "decisions/s" "exact pass"
ratios=()
before_ratios=()
status=0
for round in $(seq "$rounds"); do
  # The sides' order is reversed every other round: a run's place in the round can move it.
  sides="ours peer ${before_bin:+before}"
  ((round % 2)) || sides="${before_bin:+before} peer ours"
  for side in $sides; do
    redis-cli -p "$port" flushall >/dev/null
    case "$side" in
      ours)
        if ! rust_line=$(rust_run); then
          echo "compare-peer: the limiter's run failed" >&2; exit 1
        fi ;;
      peer)
        if ! node_line=$(node_run); then
          echo "compare-peer: rate-limiter-flexible's run failed: no figure without the peer" >&2; exit 1
        fi ;;
      before)
        if ! before_line=$(rust_run "$before_bin"); then
          echo "compare-peer: the run of $before_bin/peer-workload failed" >&2; exit 1
        fi
        before_rate=$(field "$before_line" decisions_per_sec) ;;
    esac
  done
  rust_rate=$(field "$rust_line" decisions_per_sec)
  rust_exact=$(field "$rust_line" exact_pass)
  node_rate=$(field "$node_line" decisions_per_sec)
  node_exact=$(field "$node_line" exact_pass)
  ratio=$(awk -v r="$rust_rate" -v n="$node_rate" 'BEGIN { printf "%.2f", r / n }')
  ratios+=("$ratio")
  printf '%-6s %-22s %14.0f %12s\n' "$round" "ratelimit" "$rust_rate" "$rust_exact"
  printf '%-6s %-22s %14.0f %12s\n' "$round" "rate-limiter-flexible" "$node_rate" "$node_exact"
  printf '%-6s %-22s %14s\n' "$round" "ratio ratelimit/peer" "${ratio}x"
  if [ -n "$before_bin" ]; then
    before_ratio=$(awk -v r="$rust_rate" -v b="$before_rate" 'BEGIN { printf "%.2f", r / b }')
    before_ratios+=("$before_ratio")
    printf '%-6s %-22s %14.0f %12s\n' "$round" "before" "$before_rate" "$(field "$before_line" exact_pass)"
    printf '%-6s %-22s %14s\n' "$round" "ratio ratelimit/before" "${before_ratio}x"
  fi
  if [ "$rust_exact" != 100 ]; then
    echo "compare-peer: the limiter let $rust_exact of 200 calls pass, not 100" >&2
    status=1
  fi
done
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo "median ratio ratelimit/rate-limiter-flexible over $rounds rounds: $(median "${ratios[@]}")x"
if [ -n "$before_bin" ]; then
  echo "median ratio ratelimit/before over $rounds rounds: $(median "${before_ratios[@]}")x"
fi
exit "$status"
