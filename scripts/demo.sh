#!/usr/bin/env bash
# The demo on a fresh machine: a Redis broker, a demo Celery worker whose tasks
# fail, retry and time out, a load generator, and celery-vitals on :9808.
# Ctrl-C stops everything. Override the exporter's address with
# CELERY_VITALS_LISTEN_ADDRESS (default 0.0.0.0:9808).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run="$(mktemp -d -t celery-vitals-demo.XXXXXX)"
pids=()
cleanup() {
  echo "demo: stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$run" \
  --logfile "$run/redis.log" &
pids+=($!)
export CELERY_BROKER_URL="redis://127.0.0.1:$port/0"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

.venv/bin/celery -A demo.app worker -E -c 2 -n demo@%h --loglevel=warning \
  >"$run/worker.log" 2>&1 &
pids+=($!)
.venv/bin/python -m demo.load --rate "${DEMO_RATE:-10}" >"$run/load.log" 2>&1 &
pids+=($!)

listen="${CELERY_VITALS_LISTEN_ADDRESS:-0.0.0.0:9808}"
echo "demo: broker $CELERY_BROKER_URL, worker and load running (logs in $run)"
echo "demo: metrics at http://localhost:${listen##*:}/metrics  (Ctrl-C to stop)"
.venv/bin/celery-vitals serve --broker-url "$CELERY_BROKER_URL" --listen-address "$listen" &
pids+=($!)
wait "${pids[-1]}"
