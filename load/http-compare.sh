#!/usr/bin/env bash
# Requests a second of one axum route with no limiter, with this limiter in memory and on
# Redis, and behind tower_governor, measured with wrk on loopback. The modes run interleaved
# (none, memory, governor, redis, then again), `rounds` times, and the summary gives each
# mode's median requests/s and the median of its per-round ratio to `none`: a machine that
# slows down mid-run slows every mode of that round alike.
#
#   load/http-compare.sh [--before-bin DIR] [--ietf] [seconds] [connections] [rounds]
#
# `--before-bin DIR` adds two modes to every round, `memory-before` and `redis-before`: the
# `bench-server` in DIR (a release build of another revision) in memory and on Redis, so that a
# change is measured against what it replaced in the same interleaved rounds. They swap places
# with `memory` and `redis` every other round: a slot's position in the round moved the Redis
# mode by 9% when both slots ran the same build. Give an even number of rounds.
#
# Every Redis-backed mode starts from an empty Redis (`FLUSHALL`): a log the mode before left
# behind would otherwise be the next one's to trim.
#
# Besides requests a second, each run reports the CPU time a request costs the server (user and
# system, from /proc/PID/stat over the measured run) and Redis: steadier than requests a second
# on 2 shared cores, where `wrk` and the server take turns. The summary gives the median of each.
#
# `--ietf` adds `memory-ietf` to every round: the in-memory limiter writing only the draft's two
# headers (`headers: [ietf]`), as `tower_governor` writes two, so the cost of the legacy family
# is measured apart.
#
# Needs wrk (apt-get install wrk) and redis-server. Runs itself again under `with-redis`
# (load/src/bin/with-redis.rs), which starts a throwaway redis-server (the test harness's),
# sets THROWAWAY_REDIS_URL, and stops the server at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

before_bin=""
if [ "${1:-}" = "--before-bin" ]; then
  before_bin=$(cd "${2:?--before-bin needs a directory}" && pwd)
  [ -x "$before_bin/bench-server" ] || { echo "no bench-server in $before_bin" >&2; exit 1; }
  shift 2
fi
ietf=""
if [ "${1:-}" = "--ietf" ]; then
  ietf=memory-ietf
  shift
fi
seconds=${1:-10}
connections=${2:-50}
rounds=${3:-3}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli is missing: apt-get install redis-tools" >&2; exit 1; }

if [ -z "${THROWAWAY_REDIS_URL:-}" ]; then
  cargo build --release -q -p ratelimit-load --bin with-redis
  exec ./target/release/with-redis load/http-compare.sh ${before_bin:+--before-bin "$before_bin"} ${ietf:+--ietf} "$@"
fi
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT

cargo build --release -q -p example-bench-server
echo "# $(nproc) cores; wrk -t2 -c$connections -d${seconds}s GET /api/hello; every request allowed; $rounds interleaved rounds"
printf '%-6s %-13s %14s %12s %12s %9s %9s %9s\n' round mode "requests/s" "p50" "p99" "user µs" "sys µs" "Redis µs"
redis_pid=$(redis-cli -u "$THROWAWAY_REDIS_URL" info server | awk -F: '/^process_id:/ {print $2+0}')
# Clock ticks (user and system) a process has used so far.
ticks() { awk '{print $14 + $15, $14, $15}' "/proc/$1/stat"; }
# Microseconds of CPU a request: TICKS over REQUESTS.
per_request() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }'; }
results=$(mktemp)
trap 'cleanup; rm -f "$results"' EXIT
for round in $(seq "$rounds"); do
  modes="none memory $ietf governor redis ${before_bin:+memory-before redis-before}"
  if [ -n "$before_bin" ] && [ $((round % 2)) -eq 0 ]; then
    modes="none memory-before $ietf governor redis-before memory redis"
  fi
  for mode in $modes; do
    port=$(free_port)
    case "$mode" in redis*) redis-cli -u "$THROWAWAY_REDIS_URL" flushall >/dev/null ;; esac
    server=./target/release/bench-server
    case "$mode" in *-before) server="$before_bin/bench-server" ;; esac
    "$server" "${mode%-before}" --listen "127.0.0.1:$port" --redis "$THROWAWAY_REDIS_URL" >/dev/null &
    server_pid=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/api/hello" >/dev/null 2>&1 && break; sleep 0.1; done
    wrk -t2 -c"$connections" -d2s "http://127.0.0.1:$port/api/hello" >/dev/null   # warm-up
    read -r _ user0 sys0 < <(ticks "$server_pid")
    read -r redis0 _ < <(ticks "$redis_pid")
    out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$port/api/hello")
    read -r _ user1 sys1 < <(ticks "$server_pid")
    read -r redis1 _ < <(ticks "$redis_pid")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    user=$(per_request $((user1 - user0)) "$requests")
    sys=$(per_request $((sys1 - sys0)) "$requests")
    redis_cpu=$(per_request $((redis1 - redis0)) "$requests")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    printf '%-6s %-13s %14s %12s %12s %9s %9s %9s %s\n' "$round" "$mode" "$rps" "$p50" "$p99" "$user" "$sys" "$redis_cpu" "${non2xx:+($non2xx non-2xx)}"
    echo "$round $mode $rps $user $sys $redis_cpu ${non2xx:-0}" >>"$results"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
  done
done
python3 - "$results" <<'PY'
import statistics, sys
runs = {}
cpu = {}
denied = []
for line in open(sys.argv[1]):
    r, mode, rps, user, system, redis, non2xx = line.split()
    runs.setdefault(mode, {})[r] = float(rps)
    cpu.setdefault(mode, {})[r] = (float(user), float(system), float(redis))
    if int(non2xx):
        denied.append(f"{mode} in round {r} ({non2xx})")
print("\n# median of the rounds; CPU time a request in µs")
print(f"{'mode':<13} {'requests/s':>12} {'vs none':>9} {'user':>7} {'sys':>7} {'Redis':>7}")
for mode in ["none", "memory", "memory-ietf", "governor", "redis", "memory-before", "redis-before"]:
    rates = runs.get(mode, {})
    if not rates:
        continue
    ratios = [rates[r] / runs["none"][r] for r in rates if runs["none"].get(r)]
    times = [statistics.median(c[i] for c in cpu[mode].values()) for i in range(3)]
    print(f"{mode:<13} {statistics.median(rates.values()):>12.0f} {statistics.median(ratios):>8.2f}x"
          f" {times[0]:>7.2f} {times[1]:>7.2f} {times[2]:>7.2f}")
ours = [runs["memory"][r] / runs["governor"][r] for r in runs["memory"] if runs["governor"].get(r)]
print(f"memory vs governor, median of the rounds: {statistics.median(ours):.2f}x")
if runs.get("memory-ietf"):
    ietf = [runs["memory-ietf"][r] / runs["governor"][r] for r in runs["memory-ietf"] if runs["governor"].get(r)]
    print(f"memory-ietf vs governor, median of the rounds: {statistics.median(ietf):.2f}x")
for mode in ["memory", "redis"]:
    before = runs.get(f"{mode}-before", {})
    if before:
        ratios = [runs[mode][r] / before[r] for r in runs[mode] if before.get(r)]
        print(f"{mode} vs {mode}-before, median of the rounds: {statistics.median(ratios):.2f}x")
        mine, theirs = cpu[mode], cpu[f"{mode}-before"]
        user = [mine[r][0] / theirs[r][0] for r in mine if r in theirs and theirs[r][0]]
        if user:
            print(f"{mode} vs {mode}-before, the server's user time a request: {statistics.median(user):.2f}x")
if denied:
    print("WARNING: answers other than 200, so a limit was reached and the rate counts denials,"
          " which cost less than allowed requests: " + ", ".join(denied))
PY
