#!/usr/bin/env bash
# Writes every generated file (rule file, dashboards, docs/metrics.md, the runbook
# tables, the Helm chart's copies); with --check writes nothing and fails listing
# the stale ones (scripts/test.sh runs it so).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/generate.py "$@"
