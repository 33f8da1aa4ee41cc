#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, lint, types, unit and integration tests (real redis-server, rabbitmq-server and
# Celery workers, started by the fixtures on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict, package)"
mypy
echo "== imports (declared in pyproject.toml with a range; the package's layout rules)"
python scripts/check_imports.py
echo "== links (README.md and docs/)"
python scripts/check_links.py
echo "== generated files (scripts/generate.sh --check)"
bash scripts/generate.sh --check
echo "== Celery 5.3-5.6 venvs for the agent's version matrix (scripts/celery_versions.sh)"
bash scripts/celery_versions.sh
echo "== pytest (two processes: the suite mostly waits on real brokers and Prometheus)"
pytest -n 2 --dist loadfile --durations=15 "$@"
