"""The repository's deployment files as the deploy tests read them: the Helm chart rendered
by ``helm template`` (the tool comes from tests/deploy/conftest.py's fixture)."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from stack.processes import REPO_ROOT as ROOT

CHART = ROOT / "charts" / "celery-vitals"


def helm_template(helm: str, *args: str) -> list[dict[str, Any]]:
    """The chart rendered with `args`, as the list of its objects."""
    result = subprocess.run(
        [helm, "template", "test", str(CHART), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
