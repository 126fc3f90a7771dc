#!/usr/bin/env bash
# Runs every criterion bench and prints a compact summary: the mean time per operation of each
# bench, the ratio of the limiter to its peer in each pair, and heap allocations per decision.
#
#   scripts/bench.sh [extra criterion arguments, e.g. a filter]
#
# Benches (both start their own throwaway redis-server; redis-benchmark must be on PATH):
#   load/benches/decisions.rs            cache hit and in-memory decisions vs `governor`
#   tests/benches/redis.rs               the Redis paths vs `redis-benchmark` running the same
#                                        script with the same key and arguments, in one run
# Full criterion output goes to target/bench-logs/; the summary reads criterion's estimates
# (target/criterion/**/new/estimates.json) of the benches this run measured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in redis-server redis-benchmark python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (scripts/test.sh installs Redis)" >&2; exit 1; }
done

target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
logs="$target/bench-logs"
mkdir -p "$logs"
stamp="$logs/.started"
touch "$stamp"
sleep 1 # estimates written in this second count as newer than the stamp

run() {
  local log="$logs/$1.log"
  shift
  echo "# $*" >&2
  # Progress: the allocation figures and criterion's time line of each bench (with its name).
  set +e
  "$@" -- "${extra[@]}" 2>&1 | tee "$log" | awk '
    /^allocations per decision|: Redis work: / { print; fflush(); next }
    /time: / && prev !~ /change:/ { print prev; print; fflush() }
    { prev = $0 }' >&2
  local status=${PIPESTATUS[0]}
  set -e
  [ "$status" -eq 0 ] || { echo "failed ($status); see $log" >&2; exit 1; }
}
extra=("$@")
run decisions cargo bench -p ratelimit-load --bench decisions
run redis cargo bench -p ratelimit-tests --bench redis

echo
echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(redis-server --version | cut -d' ' -f3), $(rustc --version | cut -d' ' -f1-2)"
python3 - "$target/criterion" "$stamp" "$logs" <<'EOF'
import json, os, re, sys
from pathlib import Path

root, stamp, logs = Path(sys.argv[1]), os.path.getmtime(sys.argv[2]), Path(sys.argv[3])

def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}" if ns < 100 * scale else f"{ns / scale:.0f} {unit}"
    return f"{ns:.3g} ns"

rows = []  # (group, function, mean ns, ci low, ci high)
for est in root.glob("**/new/estimates.json"):
    if est.stat().st_mtime < stamp:
        continue
    bench = json.loads((est.parent / "benchmark.json").read_text())
    mean = json.loads(est.read_text())["mean"]
    ci = mean["confidence_interval"]
    rows.append((bench["group_id"], bench.get("function_id"), mean["point_estimate"],
                 ci["lower_bound"], ci["upper_bound"]))
rows.sort()

# Pairs: in a group, `limiter` against `redis-benchmark`; the ungrouped local benches against
# `governor` (the same work: one key, always allowed).
peers = {}
for group, function, mean, _, _ in rows:
    if function == "redis-benchmark":
        peers[group] = mean
    if group.startswith("governor"):
        peers["governor"] = mean

print(f"{'bench':<58} {'mean/op':>10} {'95% CI':>21} {'ops/s':>10} {'vs peer':>8}")
for group, function, mean, lo, hi in rows:
    name = f"{group} / {function}" if function else group
    ratio = ""
    if function == "limiter" and group in peers:
        ratio = f"{mean / peers[group]:.2f}x"
    elif function is None and not group.startswith("governor") and "governor" in peers:
        ratio = f"{mean / peers['governor']:.2f}x"
    print(f"{name:<58} {fmt(mean):>10} {fmt(lo) + ' - ' + fmt(hi):>21} {1e9 / mean:>10,.0f} {ratio:>8}")
print("(vs peer: limiter time / peer time for the same work; below 1 the limiter is faster.")
print(" Redis groups: peer = redis-benchmark, same script, key and arguments; local: governor.)")

print()
for log in sorted(logs.glob("*.log")):
    if log.stat().st_mtime < stamp:
        continue
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"allocations per decision, (.*)", line)
        if m:
            print(f"allocations per decision ({log.stem}): {m.group(1)}")
    for line in log.read_text(errors="replace").splitlines():
        if ": Redis work: " in line:
            print(line)
EOF
