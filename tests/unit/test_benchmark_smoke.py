"""The throughput benchmark in miniature, so it cannot rot (figures: benchmarks/, not here)."""

from __future__ import annotations

from benchmarks.throughput import main


def test_throughput_benchmark_smoke_counts_every_event() -> None:
    results = main(["--smoke", "--no-write", "--quiet"])
    # main() raises VerificationError on any miscount; check it measured something
    workload = results["workload"]
    assert workload["events"] == sum(workload["by_type"].values())
    assert workload["events"] > 1000


def test_memory_benchmark_smoke_holds_the_uuid_map_at_its_cap() -> None:
    from benchmarks.memory import main as memory_main

    results = memory_main(["--smoke", "--no-write", "--quiet"])
    assert results["problems"] == []
    a, b, c = (results["cases"][case] for case in "ABC")
    assert (a["tasks"], a["tracked"], a["evictions"]) == (3000, 0, {"capacity": 0, "age": 0})
    assert a["succeeded"] == 3000
    assert a["by_type"]["task-sent"] == a["by_type"]["task-succeeded"] == 3000
    assert (b["tasks"], b["tracked"], b["evictions"]["capacity"]) == (800, 800, 0)
    # 3,000 tasks that never finish, a cap of 1,000: exactly 2,000 evicted
    assert (c["tasks"], c["tracked"], c["evictions"]) == (3000, 1000,
                                                          {"capacity": 2000, "age": 0})
    assert [s["tasks"] for s in c["samples"]] == [0, 1000, 2000, 3000]
    assert all(s["ru_maxrss_kib"] > 0 for s in c["samples"])


def test_scrape_benchmark_smoke_renders_every_series() -> None:
    from benchmarks.scrape import main as scrape_main

    results = scrape_main(["--smoke", "--no-write", "--quiet"])
    pairs = 10 * 5
    assert results["tasks"] == 2 * pairs
    assert results["workers"] == 5
    assert results["pairs"] == {"sent": pairs, "received": pairs, "started": pairs,
                                "succeeded": pairs}
    assert results["failed_series"] == pairs  # one exception class per pair
    assert results["families"]["celery_task_sent_total"] == pairs
    cases = ("prometheus_client", "render_unchanged", "render_changed", "http_text_unchanged",
             "http_prometheus_unchanged", "http_prometheus_changed")
    assert [results[case]["runs"] for case in cases] == [3] * len(cases)
    assert results["prometheus_client"]["bytes"] == results["bytes"]
    # Prometheus' request gets gzipped OpenMetrics: much smaller than the plain text
    assert results["http_prometheus_unchanged"]["bytes"] < results["http_text_unchanged"][
        "bytes"] / 5


def test_loss_benchmark_smoke_records_each_run() -> None:
    from benchmarks.loss import main as loss_main

    results = loss_main(["--smoke", "--no-write", "--quiet", "--rates", "20000,50000"])
    assert [(r["broker"], r["rate"]) for r in results["runs"]] == [("inprocess", 20000.0),
                                                                   ("inprocess", 50000.0)]
    for run in results["runs"]:
        assert run["error"] is None
        assert run["published"] == run["exporter_counted"] > 1000
        assert run["exporter_lost"] == 0


def test_loss_driver_records_a_verification_error_instead_of_stopping() -> None:
    from benchmarks import throughput
    from benchmarks.loss import run_one

    def losing(argv: object) -> dict[str, object]:
        raise throughput.VerificationError("lost events: exporter 12, bare 0")

    row = run_one("redis", 80000.0, 10, output=None, runner=losing)
    assert row["error"] == "lost events: exporter 12, bare 0"
    assert row["rate"] == 80000.0
