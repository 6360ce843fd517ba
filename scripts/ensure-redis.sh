#!/usr/bin/env bash
# Start a local redis-server when nothing responds on REDIS_URL (only for localhost URLs).
set -euo pipefail

url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
hostport="${url#*://}"
hostport="${hostport##*@}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port="${hostport##*:}"
[[ "$port" == "$hostport" ]] && port=6379

if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
  exit 0
fi
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
  echo "Redis at $url does not respond and is not local; start it and retry." >&2
  exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "Redis at $url does not respond and redis-server is not installed (apt-get install redis-server)." >&2
  exit 1
fi

echo "Starting redis-server on $host:$port"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile "/tmp/convention-gateway-redis-$port.log"
for _ in $(seq 50); do
  redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "redis-server did not start; see /tmp/convention-gateway-redis-$port.log" >&2
exit 1
