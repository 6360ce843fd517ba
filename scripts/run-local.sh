#!/usr/bin/env bash
# `make run`: Redis (started if needed), one trainer worker in the background, the gateway in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
scripts/ensure-redis.sh

.venv/bin/convention-gateway worker &
worker_pid=$!
trap 'kill "$worker_pid" 2>/dev/null; wait "$worker_pid" 2>/dev/null' EXIT INT TERM

.venv/bin/convention-gateway serve
