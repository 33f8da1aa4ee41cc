"""`celery-vitals dashboards` without overrides writes exactly the committed dashboards/*.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from celery_vitals.rules import dashboards
from celery_vitals.rules.config import RulesConfig
from tests.support.dashboards import DASHBOARDS, UIDS


def test_committed_json_is_what_the_command_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery_vitals",
            "dashboards",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    written = {path.name: path.read_text(encoding="utf-8") for path in (tmp_path / "out").iterdir()}
    assert sorted(written) == sorted(f"{uid}.json" for uid in UIDS)
    committed = {path.name: path.read_text(encoding="utf-8") for path in DASHBOARDS.glob("*.json")}
    stale = sorted(name for name in written if committed.get(name) != written[name])
    assert stale == [], f"stale dashboards {stale}: run scripts/generate.sh"
    assert sorted(committed) == sorted(written)


def test_output_is_deterministic_and_canonical() -> None:
    first, second = dashboards.render(RulesConfig()), dashboards.render(RulesConfig())
    assert first == second
    for text in first.values():
        data = json.loads(text)
        assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
