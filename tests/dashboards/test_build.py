"""The committed dashboards/*.json is exactly what dashboards/build.py builds."""

from __future__ import annotations

import json
import subprocess
import sys

from dashboards import build
from tests.dashboards.queries import DASHBOARDS, UIDS


def test_committed_json_is_what_the_code_builds() -> None:
    expected = build.rendered()
    assert sorted(path.name for path in expected) == sorted(f"{uid}.json" for uid in UIDS)
    stale = [path.name for path, text in expected.items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    assert stale == [], f"stale dashboards {stale}: run .venv/bin/python dashboards/build.py"
    assert sorted(path.name for path in DASHBOARDS.glob("*.json")) == sorted(
        path.name for path in expected)


def test_output_is_deterministic_and_canonical() -> None:
    first, second = build.rendered(), build.rendered()
    assert first == second
    for text in first.values():
        data = json.loads(text)
        assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_check_mode_of_the_command_passes() -> None:
    result = subprocess.run([sys.executable, str(DASHBOARDS / "build.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")
