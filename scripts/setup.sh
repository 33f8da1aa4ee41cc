#!/usr/bin/env bash
# Prepares a fresh Debian machine for the demo and the tests: the brokers and
# Prometheus tools from Debian's packages (only those missing), then a virtual
# environment in .venv with celery-vitals and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# command that proves the package is there -> Debian package
declare -A packages=(
  [redis-server]=redis-server
  [/usr/lib/rabbitmq/bin/rabbitmq-server]=rabbitmq-server
  [promtool]=prometheus
  [amtool]=prometheus-alertmanager
)
missing=()
for probe in "${!packages[@]}"; do
  command -v "$probe" >/dev/null 2>&1 || [ -x "$probe" ] || missing+=("${packages[$probe]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]} from Debian's packages"
  $sudo apt-get update -qq
  # the packages' own services are not used: tests and demo start their own on free ports
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: celery-vitals needs Python 3.11 or newer, this is {sys.version.split()[0]}")
PY
[ -x .venv/bin/python ] || python3 -m venv .venv
# (pip's notes about package-index locations this machine does not have are noise)
quiet_pip() { .venv/bin/python -m pip -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
quiet_pip install --upgrade pip >/dev/null
quiet_pip install -e '.[test]'
bash scripts/tools.sh  # docker-compose and helm for tests/deploy
echo "setup: ready (.venv/bin/celery-vitals $(.venv/bin/celery-vitals --version | awk '{print $NF}'))"
