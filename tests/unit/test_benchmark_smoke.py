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
    assert (c["tasks"], c["tracked"], c["evictions"]) == (3000, 1000, {"capacity": 2000, "age": 0})
    assert [s["tasks"] for s in c["samples"]] == [0, 1000, 2000, 3000]
    assert all(s["ru_maxrss_kib"] > 0 for s in c["samples"])
    # every sample renders /metrics: 200 name/queue pairs of series once tasks ran
    assert b["samples"][-1]["scrape_bytes"] > 5 * b["samples"][0]["scrape_bytes"]


def test_memory_benchmark_smoke_traces_the_python_heap() -> None:
    from benchmarks.memory import main as memory_main

    results = memory_main(["--smoke", "--no-write", "--quiet", "--cases", "A", "--trace"])
    samples = results["cases"]["A"]["samples"]
    assert samples[0]["traced_kib"] < samples[-1]["traced_kib"]  # the trackers' data
    assert samples[-1]["traced_kib"] * 1024 < samples[-1]["vmrss_kib"] * 1024


def test_scrape_benchmark_smoke_renders_every_series() -> None:
    from benchmarks.scrape import main as scrape_main

    results = scrape_main(["--smoke", "--no-write", "--quiet"])
    pairs = 10 * 5
    assert results["tasks"] == 2 * pairs
    assert results["workers"] == 5
    assert results["pairs"] == {
        "sent": pairs,
        "received": pairs,
        "started": pairs,
        "succeeded": pairs,
    }
    assert results["failed_series"] == pairs  # one exception class per pair
    assert results["families"]["celery_task_sent_total"] == pairs
    cases = (
        "prometheus_client",
        "render_unchanged",
        "render_changed",
        "http_text_unchanged",
        "http_prometheus_unchanged",
        "http_prometheus_changed",
        "render_unchanged_no_broker_label",
        "render_changed_no_broker_label",
    )
    assert [results[case]["runs"] for case in cases] == [3] * len(cases)
    # every sample line carries broker="redis://localhost:6379/0" (33 characters and a
    # comma or braces): the body without it is that much shorter (``samples`` counts
    # prometheus_client's lines, _created ones too, which the exposition leaves out)
    with_label = results["render_unchanged"]["bytes"]
    saved = with_label - results["render_unchanged_no_broker_label"]["bytes"]
    assert 0.9 * 34 * results["samples"] <= saved <= 35 * results["samples"]
    # the same body but for celery_vitals_scrape_duration_seconds, which counts the renders
    # in between (a few hundred bytes of buckets)
    assert abs(results["prometheus_client"]["bytes"] - results["bytes"]) < 1000
    # Prometheus' request gets gzipped OpenMetrics: much smaller than the plain text
    assert (
        results["http_prometheus_unchanged"]["bytes"] < results["http_text_unchanged"]["bytes"] / 5
    )


def test_loss_benchmark_smoke_records_each_run() -> None:
    from benchmarks.loss import main as loss_main

    results = loss_main(["--smoke", "--no-write", "--quiet", "--rates", "20000,50000"])
    assert [(r["broker"], r["rate"]) for r in results["runs"]] == [
        ("inprocess", 20000.0),
        ("inprocess", 50000.0),
    ]
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


def test_loss_driver_sizes_runs_by_seconds_and_runs_the_exporter_alone() -> None:
    from benchmarks.loss import print_report, run_one, tasks_for

    assert tasks_for(50_000, 30) == 365_854  # ~4.1 events a task: about 30 s at 50k/s
    seen: list[list[str]] = []

    def broker_run(argv: object) -> dict[str, object]:
        seen.append(list(argv))  # type: ignore[call-overload]
        exporter = {
            "events": 900,
            "lost": 100,
            "cpu_us_per_event": 15.0,
            "reconnects": 2,
            "heartbeats_missed": 3,
            "peak_backlog_events": 500,
        }
        return {
            "broker": {
                "published": {"events": 1000, "events_per_second": 49_990, "seconds": 0.02},
                "consumers": {"exporter": exporter},
                "broker_stats": {
                    "output_buffer_disconnects_logged": 2,
                    "peak_subscriber_output_buffer_bytes": 33_554_432,
                },
                "exporter_task_counters": {},
                "expected_task_counters": {},
                "problems": [],
            }
        }

    row = run_one(
        "redis", 50_000.0, tasks_for(50_000, 30), output=None, runner=broker_run, publishers=2
    )
    argv = seen[0]
    assert "--no-bare" in argv
    assert argv[argv.index("--tasks") + 1] == "365854"
    assert argv[argv.index("--publishers") + 1] == "2"
    assert (
        row["exporter_lost"],
        row["exporter_reconnects"],
        row["redis_output_buffer_disconnects"],
        row["bare_counted"],
    ) == (100, 2, 2, None)
    run_one("amqp", 20_000.0, 10, output=None, runner=broker_run, bare=True)
    assert "--no-bare" not in seen[1]
    print_report({"runs": [row]})  # the table renders a run without the bare receiver


def test_publisher_lanes_keep_each_task_in_one_lane_in_order() -> None:
    from benchmarks.throughput import generate, publisher_lanes

    load = generate(300, workers=5)
    lanes = publisher_lanes(load, 2)
    assert sorted(i for lane in lanes for i in lane) == list(range(len(load.bodies)))
    assert all(lane == sorted(lane) and lane for lane in lanes)
    lane_of_body = {i: n for n, lane in enumerate(lanes) for i in lane}
    lanes_of_task: dict[str, set[int]] = {}
    for i, body in enumerate(load.bodies):
        for event in body if isinstance(body, list) else [body]:
            if "uuid" in event:
                lanes_of_task.setdefault(event["uuid"], set()).add(lane_of_body[i])
    assert len(lanes_of_task) == 300
    assert all(len(found) == 1 for found in lanes_of_task.values())
    assert publisher_lanes(load, 1) == [list(range(len(load.bodies)))]


def test_throughput_report_without_the_bare_receiver() -> None:
    from benchmarks.throughput import _broker_report, generate, parse_args, print_report

    args = parse_args(["--broker", "amqp", "--no-bare", "--publishers", "2"])
    assert (args.bare, args.publishers) == (False, 2)
    load = generate(20)
    expected = {kind: sum(c.values()) for kind, c in load.counters.items()}
    metrics = {f"celery_task_{kind}_total": float(n) for kind, n in expected.items()}
    done = {
        "exporter": {
            "events": load.events,
            "seconds": 1.0,
            "cpu": 0.5,
            "scrapes": 2,
            "metrics": metrics,
            "peak_backlog": 10,
            "backlog": [(1.0, 5, 4)],
            "run_metrics": {"celery_vitals_event_stream_reconnects_total": 1.0},
            "scrape": {"cpu_ms": 1.0, "wall_ms": 2.0},
        }
    }
    report = _broker_report(
        load,
        "amqp",
        50_000.0,
        done=done,
        idle_cpu_per_second=0.0,
        poll=1.0,
        published={"events": load.events, "bodies": 1, "seconds": 1.0, "publishers": 2},
    )
    assert report["problems"] == []
    assert report["ratios"] == {"wall_throughput": None, "cpu_throughput": None}
    assert report["consumers"]["exporter"]["reconnects"] == 1
    assert "bare" not in report["consumers"]
    print_report(
        {
            "workload": {
                "events": load.events,
                "bodies": 1,
                "tasks": 20,
                "batch": 24,
                "payload_bytes": 1,
            },
            "broker": report,
        }
    )


def test_concurrent_scrapes_benchmark_smoke_answers_every_scrape() -> None:
    from benchmarks.concurrent_scrapes import main as concurrent_main

    results = concurrent_main(["--smoke", "--no-write", "--quiet"])
    for case in ("backlog_5", "backlog_128"):
        assert results[case]["scrapes"] == 10 * 2
        assert results[case]["samples"] > 1500  # the ~2,000-series exporter, rendered
    assert results["backlog_128"]["failed"] == 0
    assert (results["backlog_5"]["backlog"], results["backlog_128"]["backlog"]) == (5, 128)


def test_recovery_benchmark_smoke_sees_every_probe_give_up() -> None:
    from benchmarks.recovery import main as recovery_main

    results = recovery_main(["--smoke", "--runs", "1", "--timeout", "0.2", "--no-write", "--quiet"])
    assert [(row["probe"], row["fault"], row["raised"]) for row in results["give_up"]] == [
        (probe, fault, ["OperationalError"])
        for probe, fault in [
            ("redis", "closed port"),
            ("redis", "silent listener"),
            ("amqp", "closed port"),
            ("amqp+management", "closed port"),
            ("amqp", "silent listener"),
            ("amqp+management", "silent listener"),
        ]
    ]
    assert results["broker_return"] == []  # the full run only: it needs servers


def test_publish_stamp_benchmark_smoke_publishes_each_mode_as_it_says() -> None:
    from benchmarks.publish_stamp import MODES
    from benchmarks.publish_stamp import main as stamp_main

    # main() raises VerificationError unless each mode's message carries what it says
    results = stamp_main(["--smoke", "--no-write", "--quiet"])
    assert results["tasks_per_mode"] == 2_000
    assert results["broker"] == "memory://"
    assert results["none"]["cpu_ratio"] == 1.0
    assert results["none"]["cpu_us_over_none"] == 0.0
    assert MODES == ("none", "noop-receiver", "header", "header+timestamp")
    for mode in MODES:
        assert results[mode]["batches"] == 4  # 2,000 by 500
        assert results[mode]["cpu_us_per_publish"] > 0
        assert results["dispatch"][mode] > 0
