#!/usr/bin/env bash
# The agent's Celery matrix: one virtual environment per Celery minor older than the
# main venv's (5.3, 5.4, 5.5, 5.6), in .venv-celery/<minor>, each with the kombu,
# billiard, vine, amqp and redis-py of its release (pins: tests/support/celery_versions.py),
# built in parallel and reused while the pins and pyproject.toml's dependencies are the
# same. tests/integration/test_agent_celery_versions.py runs its workers with them.
# scripts/test.sh runs this before pytest; `bash scripts/celery_versions.sh 5.3` builds one.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.support.celery_versions "$@"
