"""scripts/check_imports.py: an undeclared import fails, declared and stdlib ones pass."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_imports", ROOT / "scripts" / "check_imports.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_undeclared_import_is_named_with_its_line(tmp_path: Path) -> None:
    check = script()
    code = tmp_path / "mod.py"
    code.write_text("import json\nimport amqp\nfrom kombu import Queue\n\nimport pytest\n")
    allowed = check.declared(["amqp>=5.1.1,<6", "kombu>=5.3,<6"])
    assert list(check.problems([code], allowed)) == [
        f"{code}:5: imports pytest (from pytest), which pyproject.toml does not declare"
    ]


def test_requirements_without_a_range_are_named() -> None:
    check = script()
    assert list(check.unbounded(check.declared(["click>=8.1", "types-PyYAML"]))) == [
        "pyproject.toml: types-pyyaml has no version range ('types-PyYAML')"
    ]


def test_the_repository_declares_everything_it_imports() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_imports.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
