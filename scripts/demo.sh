#!/usr/bin/env bash
# The demo on a fresh machine: Redis, a demo Celery worker with the celery-vitals agent,
# the exporter, Prometheus with the alert rules, Alertmanager, and a webhook receiver that
# prints pages and tickets here while the load follows a timeline of incidents.
# Everything on free loopback ports; Ctrl-C stops everything (README, first section).
#   DEMO_INCIDENTS=name[,name]  only these incidents, back to back, no warm-up
#   DEMO_QUIET=1                Redis, worker, steady load and the exporter only
#   CELERY_VITALS_LISTEN_ADDRESS  the exporter's address (default: a free loopback port)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m demo
