#!/usr/bin/env bash
# Redis CPU per decision: each of our scripts against a minimal script of the same algorithm.
#
#   scripts/script-cost.sh [--repeat N] [--requests N] [--before GIT-REV] [--only ALGORITHM]
#   scripts/script-cost.sh --instructions [--requests N] [--before GIT-REV] [--only ALGORITHM]
#
# For every row: FLUSHALL, CONFIG RESETSTAT, then
#   redis-benchmark -n REQUESTS -c 50 -P 16 -r 10000 EVALSHA <sha> <numkeys> key:__rand_int__ ... args
# on the allowed path (limits far above what the run can spend, windows longer than the run, so
# nothing is trimmed), and `usec_per_call` of EVALSHA from INFO commandstats (Redis's own CPU time
# for the whole script, the commands it calls included) and the calls a second redis-benchmark
# saw. The rows run interleaved, REPEAT times over (default 3); the table shows medians, ours
# over the minimal script, and decisions a second per Redis core (1e6 / usec_per_call).
#
# The minimal scripts keep none of our rules beyond the algorithm itself (see each below): they
# are the floor one can reach with the same Redis commands. `--before REV` adds a row for our
# script as it was at REV (e.g. `--before main`), in the same interleaved runs. `--only` keeps the
# rows of one algorithm (fixed_window, token_bucket, sliding_counter, sliding_window,
# multi_window).
#
# `--instructions` counts instead of timing, for a machine too busy to time on: each row runs on
# its own redis-server under `valgrind --tool=callgrind --toggle-collect=evalShaCommand`
# (REQUESTS default 20000, same redis-benchmark command), and the table shows the CPU
# instructions Redis executed a call inside EVALSHA (script and the commands it calls; not the
# network and protocol work around it, which is the same for every row). Deterministic to about
# 1%, where usec_per_call on a loaded machine moves by 50% from one run to the next.
#
# Runs itself again under `with-redis` (load/src/bin/with-redis.rs): a throwaway redis-server on
# a free port, stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

repeat=3
requests=200000
before=""
only=""
instructions=""
while [ $# -gt 0 ]; do
  case $1 in
    --repeat) repeat=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --before) before=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --instructions) instructions=1; shift ;;
    *) echo "usage: $0 [--instructions] [--repeat N] [--requests N] [--before GIT-REV] [--only ALGORITHM]" >&2; exit 2 ;;
  esac
done

if [ -n "$instructions" ]; then
  [ "$requests" = 200000 ] && requests=20000
elif [ -z "${THROWAWAY_REDIS_PORT:-}" ]; then
  target=${CARGO_TARGET_DIR:-target}
  cargo build -q -p ratelimit-load --bin with-redis
  exec "$target/debug/with-redis" "$0" --repeat "$repeat" --requests "$requests" ${before:+--before "$before"} ${only:+--only "$only"}
fi
port=${THROWAWAY_REDIS_PORT:-}
cli() { redis-cli -p "$port" "$@"; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# A script as the limiter sends it (`assemble!` in ratelimit-core/src/scripts.rs): the clock
# prelude, the binding and arguments preludes when the tree has them (older trees, for
# `--before`, may not), then the body.
assemble() { # DIR BODY
  local dir=$1 body=$2 prelude
  cat "$dir/prelude/clock.lua"
  for prelude in binding arguments; do
    if [ -f "$dir/prelude/$prelude.lua" ]; then cat "$dir/prelude/$prelude.lua"; fi
  done
  cat "$dir/$body"
}

# The minimal scripts: the algorithm's Redis commands and nothing else (no nonce, no µs-exact
# window edge, no binding window, a bare reply).
minimal_fixed_window='
local count = redis.call("INCR", KEYS[1])
if count == 1 then redis.call("PEXPIRE", KEYS[1], ARGV[2]) end
return count <= tonumber(ARGV[1]) and 1 or 0'
minimal_token_bucket='
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[2]) / tonumber(ARGV[1])
local tat = tonumber(redis.call("GET", KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tonumber(ARGV[2]) then return 0 end
redis.call("SET", KEYS[1], new_tat, "PX", math.ceil((new_tat - now) / 1000))
return 1'
minimal_sliding_counter='
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local previous = tonumber(redis.call("GET", KEYS[2])) or 0
local current = tonumber(redis.call("GET", KEYS[1])) or 0
local elapsed = now % window
if current + 1 + previous * (window - elapsed) / window > limit then return 0 end
redis.call("INCR", KEYS[1])
redis.call("PEXPIRE", KEYS[1], math.ceil(2 * window / 1000))
return 1'
minimal_sliding_window='
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
if redis.call("ZCARD", KEYS[1]) >= limit then return 0 end
redis.call("ZADD", KEYS[1], now, ARGV[3])
redis.call("PEXPIRE", KEYS[1], math.ceil(window / 1000))
return 1'
minimal_multi_window='
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local longest = 0
for i = 2, #ARGV, 2 do longest = math.max(longest, tonumber(ARGV[i])) end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - longest)
for i = 1, #ARGV - 1, 2 do
  if redis.call("ZCOUNT", KEYS[1], now - tonumber(ARGV[i + 1]) + 1, "+inf") >= tonumber(ARGV[i]) then
    return 0
  end
end
redis.call("ZADD", KEYS[1], now, ARGV[#ARGV])
redis.call("PEXPIRE", KEYS[1], math.ceil(longest / 1000))
return 1'

# Limits no run can spend, windows no run outlasts: the allowed path, nothing to trim.
limit=1000000000
minute=60000000
hour=3600000000
# Each __rand_int__ is its own random number below 10000: two of them make a nonce that does
# not repeat within a run.
nonce=__rand_int____rand_int__

rows=()
declare -A source sha args

add_ours() { # NAME DIR BODY ARGS...
  local name=$1 dir=$2 body=$3; shift 3
  if [ -n "$only" ] && [ "${name%%/*}" != "$only" ]; then return; fi
  rows+=("$name")
  source[$name]=$(assemble "$dir" "$body")
  args[$name]="$*"
}
add_minimal() { # NAME SOURCE ARGS...
  local name=$1 lua=$2; shift 2
  if [ -n "$only" ] && [ "${name%%/*}" != "$only" ]; then return; fi
  rows+=("$name")
  source[$name]=$lua
  args[$name]="$*"
}

dirs=(ratelimit-core/lua)
labels=(ours)
if [ -n "$before" ]; then
  git archive "$before" ratelimit-core/lua | tar -x -C "$scratch"
  dirs+=("$scratch/ratelimit-core/lua")
  labels+=("$before")
fi

fw="1 rl:{fw:__rand_int__}:fw allow 1 $nonce $limit $minute"
# A whole emission interval (60 µs) for the bucket, so the minimal one stays in integers.
tb="1 rl:{tb:__rand_int__}:tb allow 1 $nonce 1000000 $minute"
sc="1 rl:{sc:__rand_int__}:sc allow 1 $nonce $limit $minute"
sw="1 rl:{sw:__rand_int__}:sw allow 1 $nonce $limit $minute"
mw="1 rl:{mw:__rand_int__}:mw allow 1 $nonce $limit $minute $limit $hour"
for i in "${!dirs[@]}"; do
  # The fixed window's third argument is the call's increment (cost x 65536) where its counter
  # is an integer, the nonce in trees before that.
  if grep -q INCRBY "${dirs[$i]}/fixed_window.lua"; then
    add_ours "fixed_window/${labels[$i]}" "${dirs[$i]}" fixed_window.lua ${fw/ $nonce / 65536 }
  else
    add_ours "fixed_window/${labels[$i]}" "${dirs[$i]}" fixed_window.lua $fw
  fi
done
add_minimal fixed_window/minimal "$minimal_fixed_window" 1 'min:fw:__rand_int__' $limit 60000
for i in "${!dirs[@]}"; do add_ours "token_bucket/${labels[$i]}" "${dirs[$i]}" token_bucket.lua $tb; done
add_minimal token_bucket/minimal "$minimal_token_bucket" 1 'min:tb:__rand_int__' 1000000 $minute
for i in "${!dirs[@]}"; do
  # The sliding counter keeps two integer counters a window (even and odd windows) where its
  # script uses INCRBY, and takes the increment as its third argument; one text counter and a
  # nonce in trees before that.
  if grep -q INCRBY "${dirs[$i]}/sliding_counter.lua"; then
    add_ours "sliding_counter/${labels[$i]}" "${dirs[$i]}" sliding_counter.lua \
      2 'rl:{sc:__rand_int__}:sc' 'rl:{sc:__rand_int__}:sc:1' allow 1 65536 $limit $minute
  else
    add_ours "sliding_counter/${labels[$i]}" "${dirs[$i]}" sliding_counter.lua $sc
  fi
done
# Two independent random keys: the current counter and the previous one.
add_minimal sliding_counter/minimal "$minimal_sliding_counter" 2 'min:sc:__rand_int__' 'min:sc:__rand_int__' $limit $minute
for i in "${!dirs[@]}"; do add_ours "sliding_window/${labels[$i]}" "${dirs[$i]}" sliding_window.lua $sw; done
add_minimal sliding_window/minimal "$minimal_sliding_window" 1 'min:sw:__rand_int__' $limit $minute $nonce
for i in "${!dirs[@]}"; do add_ours "multi_window/${labels[$i]}" "${dirs[$i]}" multi_window.lua $mw; done
add_minimal multi_window/minimal "$minimal_multi_window" 1 'min:mw:__rand_int__' $limit $minute $limit $hour $nonce

# Loads a row's script on the server at $port and checks that it answers "allowed" (our
# scripts: the first field of the reply) before it is measured.
load_row() { # ROW
  local row=$1 first
  sha[$row]=$(cli script load "${source[$row]}")
  # shellcheck disable=SC2086
  first=$(cli evalsha "${sha[$row]}" ${args[$row]//__rand_int__/7} | head -1)
  cli del "$(echo "${args[$row]//__rand_int__/7}" | cut -d' ' -f2)" >/dev/null
  if [ "$first" != 1 ]; then
    echo "$row does not take the allowed path (first field of its reply: $first)" >&2
    exit 1
  fi
}

benchmark() { # ROW
  # shellcheck disable=SC2086
  out=$(redis-benchmark -p "$port" -n "$requests" -c 50 -P 16 -r 10000 -q \
    EVALSHA "${sha[$1]}" ${args[$1]} | tr '\r' '\n')
  if echo "$out" | grep -qi error; then
    echo "$1: $out" >&2
    exit 1
  fi
}

evalsha_stat() { # FIELD
  cli info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:' | grep -Eo "[:,]$1=[0-9.]+" | cut -d= -f2
}

header() {
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2), load average:$(uptime | sed 's/.*load average://')"
}

if [ -n "$instructions" ]; then
  declare -A ir
  for row in "${rows[@]}"; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    valgrind --tool=callgrind --toggle-collect=evalShaCommand --callgrind-out-file="$scratch/callgrind.out" \
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$scratch" \
      >"$scratch/valgrind.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do cli ping >/dev/null 2>&1 && break; sleep 0.2; done
    load_row "$row"
    cli config resetstat >/dev/null
    benchmark "$row"
    calls=$(evalsha_stat calls)
    cli shutdown nosave >/dev/null 2>&1 || true
    wait "$server" || true
    total=$(grep -E '^(summary|totals):' "$scratch/callgrind.out" | head -1 | awk '{ print $2 }')
    ir[$row]=$((total / calls))
    echo "# $row: $((total / calls)) instructions a call ($calls calls)" >&2
  done
  header
  echo "# valgrind --tool=callgrind --toggle-collect=evalShaCommand redis-server; redis-benchmark -n $requests -c 50 -P 16 -r 10000, allowed path"
  printf '| %-24s | %20s | %9s |\n' script 'instructions a call' 'x minimal'
  printf '|%s|%s|%s|\n' --------------------------: ----------------------: -----------:
  for row in "${rows[@]}"; do
    printf '| %-24s | %20d | %9.2f |\n' "$row" "${ir[$row]}" "$(echo "${ir[$row]} / ${ir[${row%%/*}/minimal]}" | bc -l)"
  done
  exit 0
fi

for row in "${rows[@]}"; do load_row "$row"; done

declare -A usec rps
for run in $(seq 1 "$repeat"); do
  for row in "${rows[@]}"; do
    cli flushall >/dev/null
    cli config resetstat >/dev/null
    benchmark "$row"
    r=$(echo "$out" | grep -Eo '[0-9.]+ requests per second' | tail -1 | cut -d' ' -f1)
    u=$(evalsha_stat usec_per_call)
    usec[$row]+="$u "
    rps[$row]+="$r "
    echo "# run $run/$repeat $row: $u usec/call, $r calls/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

header
echo "# redis-benchmark -n $requests -c 50 -P 16 -r 10000, allowed path, median of $repeat interleaved runs"
printf '| %-24s | %13s | %9s | %13s | %16s |\n' script 'usec_per_call' 'x minimal' 'calls/s (-P16)' 'decisions/s/core'
printf '|%s|%s|%s|%s|%s|\n' --------------------------: ---------------: -----------: ---------------: ------------------:
for row in "${rows[@]}"; do
  algorithm=${row%%/*}
  u=$(echo "${usec[$row]}" | median)
  m=$(echo "${usec[$algorithm/minimal]}" | median)
  r=$(echo "${rps[$row]}" | median)
  printf '| %-24s | %13.2f | %9.2f | %14.0f | %16.0f |\n' "$row" "$u" "$(echo "$u / $m" | bc -l)" "$r" "$(echo "1000000 / $u" | bc -l)"
done
