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
    sys.modules[spec.name] = module  # its dataclasses look their module up
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


def plant(root: Path, files: dict[str, str]) -> Path:
    """A package celery_vitals under root with the given modules (path -> source)."""
    package = root / "celery_vitals"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        for parent in path.relative_to(package).parents:
            (package / parent / "__init__.py").touch()
    return package


def test_the_layout_rules_pass_on_a_clean_tree(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "brokers/__init__.py": (
                "def for_config():\n    import celery_vitals.brokers.redis.probe\n"
            ),
            "brokers/base.py": "class Probe: ...\n",
            "brokers/redis/probe.py": (
                "import redis\nfrom celery_vitals.brokers.base import Probe\n"
                "def keys(channel):\n    return channel._q_for_pri('q', 3)\n"
            ),
            "decode.py": "import bz2\nbz2.decompress(b'')\n",
            "http.py": "import gzip\ngzip.compress(b'')\n",
            "doctor/look.py": "from celery_vitals.brokers import for_config\n",
            "doctor/checks.py": "from celery_vitals.doctor.look import _seen\n",
            "doctor/prometheus.py": "from celery_vitals.rules.alerts import alert_names\n",
            "rules/alerts.py": "def alert_names(): ...\n",
            "rules/command.py": "from celery_vitals.rules.alerts import alert_names\n",
            "cli.py": "from celery_vitals import doctor, dlq\n",
            "dlq.py": "from celery_vitals.brokers.base import Probe\n",
            "agent/pool.py": "def pool(worker):\n    return worker.pool._pool\n",
        },
    )
    assert list(script().layout(package)) == []


def test_each_layout_rule_names_the_breach_and_its_line(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "dlq.py": (
                "import redis\n"  # 1: a broker library outside brokers/<name>/
                "from celery_vitals.doctor import checks\n"  # 2: a command imports another
                "from celery_vitals.config import _buckets\n"  # 3: same folder: allowed
                "def depth(config, probe):\n"
                "    if config.transport == 'redis':\n"  # 5: tests the transport
                "        return probe._channel()\n"  # 6: another object's private
                "import zlib\n"
                "zlib.decompressobj()\n"  # 8: a second decoder
            ),
            "config.py": "_buckets = ()\n",
            "agent/__init__.py": "from celery_vitals.config import _buckets\n",
            "doctor/checks.py": "import celery_vitals.stream\n",
            "doctor/report.py": "from celery_vitals.rules import command\n",
            "rules/command.py": "\n",
            "stream.py": "from typing import TYPE_CHECKING\nimport celery_vitals.events\n",
            "events.py": "import celery_vitals.stream\n",
            "brokers/base.py": "import boto3\n",  # brokers/ itself is not a broker's home
        },
    )
    assert sorted(script().layout(package)) == sorted(
        [
            "celery_vitals/dlq.py:1: imports redis: only brokers/<name>/ may",
            "celery_vitals/dlq.py:2: the command dlq imports the command doctor",
            "celery_vitals/doctor/report.py:1: the command doctor imports the command rules",
            "celery_vitals/agent/__init__.py:1: imports _buckets from config, "
            "private to another folder",
            "celery_vitals/dlq.py:5: tests the transport (config.transport == 'redis'): "
            "ask the broker object",
            "celery_vitals/dlq.py:6: reaches into probe._channel: another object's private, "
            "kept in brokers/<name>/",
            "celery_vitals/dlq.py:8: zlib.decompressobj outside decode.py",
            "celery_vitals/brokers/base.py:1: imports boto3: only brokers/<name>/ may",
            "celery_vitals: import cycle events -> stream -> events",
        ]
    )


def test_an_import_for_type_checking_only_makes_no_cycle(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "stream.py": "import celery_vitals.events\n",
            "events.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import celery_vitals.stream\n"
            ),
        },
    )
    assert list(script().layout(package)) == []
