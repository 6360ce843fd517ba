#!/usr/bin/env bash
# `make run`: Redis (started if needed), one trainer worker in the background, the gateway in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
scripts/ensure-redis.sh

# The worker exits when Redis fails under a running job; restart it so that the queue keeps being consumed.
(
  while true; do
    .venv/bin/convention-gateway worker || echo "worker exited with status $?; restarting in 5 s" >&2
    sleep 5
  done
) &
worker_pid=$!
trap 'pkill -P "$worker_pid" 2>/dev/null; kill "$worker_pid" 2>/dev/null; wait "$worker_pid" 2>/dev/null' EXIT INT TERM

.venv/bin/convention-gateway serve
