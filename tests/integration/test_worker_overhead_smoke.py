"""benchmarks/worker_overhead.py in miniature (300 tasks, solo), so it cannot rot.

The benchmark itself checks that every task ran and that the agent counted exactly
as many successes; figures come from the full run (docs/benchmarks.md), not from here.
"""

from __future__ import annotations

import pytest
from benchmarks.worker_overhead import MODES, main

pytestmark = pytest.mark.integration


def test_worker_overhead_smoke_runs_every_mode() -> None:
    result = main(["--smoke", "--no-write", "--quiet"])
    runs = result["results"]["solo"]["runs"]
    assert list(runs) == list(MODES)
    assert [runs[mode]["agent_succeeded"] for mode in MODES] == [None, None, 300, 300]
    assert all(run["cpu_s"] > 0 and run["wall_s"] > 0 for run in runs.values())
    assert runs["nothing"]["cpu_ratio"] == 1.0
