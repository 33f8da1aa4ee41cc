"""The throughput benchmark in miniature, so it cannot rot (figures: benchmarks/, not here)."""

from __future__ import annotations

from benchmarks.throughput import main


def test_throughput_benchmark_smoke_counts_every_event() -> None:
    results = main(["--smoke", "--no-write", "--quiet"])
    # main() raises VerificationError on any miscount; check it measured something
    workload = results["workload"]
    assert workload["events"] == sum(workload["by_type"].values())
    assert workload["events"] > 1000
