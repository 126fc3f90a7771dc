#!/usr/bin/env bash
# Soak: the limiter's memory stays bounded by its configuration under millions of distinct keys
# (see load/src/bin/soak.rs for the phases, the workloads and the bounds).
#
#   scripts/soak.sh [steady duration, default 10m]
#
# `keys`: 10,000,000 distinct keys through the in-memory limiter (max_keys 1,000,000), and
# 2,000,000 through a Redis-backed limiter with the cache on (max_size 64MB), exact and lease
# mode; `steady`: 20,000 decisions a second per phase, all phases side by side, for the duration.
# Prints Markdown tables on stdout (progress on stderr); exits non-zero if a bound did not hold.
# The Redis phases run on a throwaway redis-server (the test harness's) on a free loopback port,
# stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=${1:-10m}
command -v redis-server >/dev/null || {
  echo "redis-server is not on PATH (scripts/test.sh installs it)" >&2
  exit 1
}

cargo build --release -q -p ratelimit-load --bin soak
echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3), $(uname -sr)"
echo "# load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
./target/release/soak keys || status=1
echo
./target/release/soak steady --duration "$duration" || status=1
exit $status
