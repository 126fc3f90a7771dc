#!/usr/bin/env bash
# Measures the local cache's accuracy and its savings in Redis calls: four limiters sharing one
# Redis and one hot key, steady and bursty loads, no cache / exact cache / leases of 5 and 20
# (see ratelimit-core/examples/cache_accuracy.rs for the definitions), then an abusive client.
#
#   scripts/cache-accuracy.sh [seconds per run]
#
# Starts a throwaway redis-server on a free port, and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-10}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

cargo build --release -q -p ratelimit-core --example cache_accuracy
echo "# machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
./target/release/examples/cache_accuracy "redis://127.0.0.1:$port" "$seconds"
