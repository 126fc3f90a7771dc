# Sourced by the measuring scripts: a throwaway redis-server on a free loopback port.
#
#   . scripts/lib/throwaway-redis.sh
#   start_throwaway_redis          # sets REDIS_PORT; stop_throwaway_redis undoes it
#   trap stop_throwaway_redis EXIT # or call it from the script's own cleanup

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_throwaway_redis() {
  REDIS_PORT=$(free_port)
  REDIS_DIR=$(mktemp -d)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
    --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis-server did not start; its log:" >&2
  cat "$REDIS_DIR/redis.log" >&2
  return 1
}

stop_throwaway_redis() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$REDIS_DIR"
}
