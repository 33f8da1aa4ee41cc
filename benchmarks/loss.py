"""Event loss at fixed rates, per broker: events published vs counted.

Why: issue 7 asks for zero loss at 50k events/s on both brokers. This is a
thin driver around the throughput benchmark's broker mode (benchmarks/
throughput.py --broker B --rate R --no-bare): for each broker and rate it
publishes a synthetic workload at that rate to `celery-vitals serve`, run
with its shipped defaults, and with the broker's default limits left in
place (Redis' pub/sub output buffer, the event queue's 5 s TTL and length cap
on RabbitMQ), and records what it counted. Each run lasts about
``--seconds`` (default 30: long enough for the 5 s TTL to bite, and for a
backlog that keeps growing to show it): rate * seconds / 4.1 tasks of about
4.1 events each, unless ``--tasks`` fixes the count. The exporter runs
alone, so that on a small machine it does not share its CPU with the bare
receiver as well as with the broker and the publisher (``--with-bare`` adds
it back). Per run it also records the exporter's
event-stream reconnects and, on Redis, the subscribers disconnected for
exceeding the pub/sub output-buffer limit. A run that loses events makes the
throughput benchmark raise VerificationError; here that is a result, not a
stop.

    python benchmarks/loss.py                                  # 20k, 50k, 80k x redis, amqp
    python benchmarks/loss.py --brokers redis --rates 20000,50000 --seconds 20
    python benchmarks/loss.py --smoke --no-write               # in process, no broker

Prints one table and writes benchmarks/results/loss.json (each run's full
throughput JSON goes to benchmarks/results/loss-runs/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import throughput
except ImportError:  # run as `python benchmarks/loss.py`: benchmarks/ is on sys.path
    import throughput  # type: ignore[no-redef]

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "loss-runs"

Runner = Callable[[Sequence[str]], dict[str, Any]]

EVENTS_PER_TASK = 4.1  # the throughput workload: sent, received, started, ended, 2% retries


def tasks_for(rate: float, seconds: float) -> int:
    """Tasks whose events, published at ``rate``, last about ``seconds``."""
    return max(1, math.ceil(rate * seconds / EVENTS_PER_TASK))


def run_one(
    broker: str,
    rate: float,
    tasks: int,
    *,
    output: Path | None,
    runner: Runner = throughput.main,
    bare: bool = False,
    publishers: int = 1,
) -> dict[str, Any]:
    """One fixed-rate run; a VerificationError (events lost) is recorded, not raised."""
    argv = [
        "--broker",
        broker,
        "--rate",
        f"{rate:g}",
        "--tasks",
        str(tasks),
        "--quiet",
        "--publishers",
        str(publishers),
    ]
    argv += [] if bare else ["--no-bare"]
    argv += ["--output", str(output)] if output is not None else ["--no-write"]
    row: dict[str, Any] = {
        "broker": broker,
        "rate": rate,
        "tasks": tasks,
        "bare": bare,
        "publishers": publishers,
        "error": None,
    }
    t0 = time.perf_counter()
    result: dict[str, Any] | None = None
    try:
        result = runner(argv)
    except throughput.VerificationError as error:
        row["error"] = str(error)
        if output is not None and output.exists():  # written before the error is raised
            result = json.loads(output.read_text())
    except Exception as error:  # a broker that would not start is a row too
        row["error"] = f"{type(error).__name__}: {error}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if result is not None and "broker" in result:
        b = result["broker"]
        exporter, bare_receiver = b["consumers"]["exporter"], b["consumers"].get("bare")
        stats = b.get("broker_stats") or {}
        row.update(
            {
                "published": b["published"]["events"],
                "published_per_second": b["published"]["events_per_second"],
                "publish_seconds": b["published"]["seconds"],
                "exporter_counted": exporter["events"],
                "exporter_lost": exporter["lost"],
                "bare_counted": bare_receiver["events"] if bare_receiver else None,
                "bare_lost": bare_receiver["lost"] if bare_receiver else None,
                "exporter_cpu_us_per_event": exporter["cpu_us_per_event"],
                "exporter_reconnects": exporter.get("reconnects"),
                "exporter_heartbeats_missed": exporter.get("heartbeats_missed"),
                "peak_backlog_events": exporter.get("peak_backlog_events"),
                "redis_output_buffer_disconnects": stats.get("output_buffer_disconnects_logged"),
                "redis_peak_subscriber_output_buffer_bytes": stats.get(
                    "peak_subscriber_output_buffer_bytes"
                ),
                "broker_stats": stats,
                "task_counters_match": (b["exporter_task_counters"] == b["expected_task_counters"]),
                "problems": b["problems"],
            }
        )
    elif result is not None:  # in process (smoke): counted == published, or it raised
        events = result["workload"]["events"]
        row.update(
            {
                "published": events,
                "published_per_second": None,
                "publish_seconds": None,
                "exporter_counted": events,
                "exporter_lost": 0,
                "bare_counted": None,
                "bare_lost": None,
                "exporter_cpu_us_per_event": None,
                "exporter_reconnects": None,
                "exporter_heartbeats_missed": None,
                "peak_backlog_events": None,
                "redis_output_buffer_disconnects": None,
                "redis_peak_subscriber_output_buffer_bytes": None,
                "broker_stats": {},
                "task_counters_match": True,
                "problems": [],
            }
        )
    return row


def _smoke_runner(argv: Sequence[str]) -> dict[str, Any]:
    """No broker in a test: the throughput smoke run in process, which verifies every count."""
    return throughput.main(["--smoke", "--no-write", "--quiet"])


def _n(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _lost(row: dict[str, Any]) -> str:
    lost, published = row.get("exporter_lost"), row.get("published")
    if not lost or not published:
        return _n(lost)
    return f"{lost:,} ({lost / published:.1%})"


def _mib(value: object) -> str:
    return "-" if not isinstance(value, int) else f"{value / 2**20:.1f}"


def print_report(result: dict[str, Any]) -> None:
    with_bare = any(r.get("bare") for r in result["runs"])
    header = [
        "broker",
        "target/s",
        "achieved/s",
        "s",
        "published",
        "exporter counted",
        "exporter lost",
        "reconnects",
        "peak backlog",
        "redis OB disconnects",
        "redis peak OB MiB",
    ]
    if with_bare:
        header += ["bare counted", "bare lost"]
    rows: list[list[object]] = [[*header, "verdict"]]
    for r in result["runs"]:
        lost = r.get("exporter_lost")
        verdict = (
            "no data"
            if lost is None
            else "lossless"
            if lost == 0 and not r["error"]
            else "LOSS"
            if lost
            else "MISCOUNT"
        )
        row = [
            r["broker"],
            f"{r['rate']:,.0f}",
            _n(r.get("published_per_second")),
            _n(r.get("publish_seconds")),
            _n(r.get("published")),
            _n(r.get("exporter_counted")),
            _lost(r),
            _n(r.get("exporter_reconnects")),
            _n(r.get("peak_backlog_events")),
            _n(r.get("redis_output_buffer_disconnects")),
            _mib(r.get("redis_peak_subscriber_output_buffer_bytes")),
        ]
        if with_bare:
            row += [_n(r.get("bare_counted")), _n(r.get("bare_lost"))]
        rows.append([*row, verdict])
    print(table(rows))
    for r in result["runs"]:
        if r["error"]:
            print(f"{r['broker']} at {r['rate']:,.0f}/s: {r['error'].splitlines()[0]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/loss.py", description="Events published vs counted at fixed rates."
    )
    parser.add_argument("--brokers", default="redis,amqp", help="comma-separated: redis, amqp")
    parser.add_argument("--rates", default="20000,50000,80000", help="comma-separated events/s")
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="about how long each run publishes: rate * seconds / 4.1 tasks",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="tasks per run (~4.1 events each), instead of --seconds",
    )
    parser.add_argument(
        "--with-bare",
        dest="bare",
        action="store_true",
        help="also run the bare receiver (it competes for the CPU)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=1,
        help="publisher processes per run (see throughput.py --publishers)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the driver only: throughput's in-process smoke run per rate",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "loss.json")
    parser.add_argument("--no-write", action="store_true", help="do not write JSON files")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not args.brokers or not set(args.brokers) <= {"redis", "amqp"}:
        parser.error("--brokers: expected some of redis, amqp")
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates: expected comma-separated numbers")
    if not args.rates or min(args.rates) <= 0 or args.seconds <= 0:
        parser.error("--rates and --seconds must be positive")
    if (args.tasks is not None and args.tasks < 1) or args.publishers < 1:
        parser.error("--tasks and --publishers must be at least 1")
    if args.smoke:
        args.brokers = ["inprocess"]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every broker x rate; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "loss",
        "mode": "smoke" if args.smoke else "brokers",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "tasks": args.tasks,
        "seconds": None if args.tasks else args.seconds,
        "bare": args.bare,
        "publishers": args.publishers,
        "runs": [],
    }
    for broker in args.brokers:
        for rate in args.rates:
            output = None if args.no_write else RUNS / f"throughput-{broker}-{rate:g}.json"
            if output is not None:
                output.parent.mkdir(parents=True, exist_ok=True)
            runner = _smoke_runner if args.smoke else throughput.main
            tasks = args.tasks or tasks_for(rate, args.seconds)
            row = run_one(
                broker,
                rate,
                tasks,
                output=output,
                runner=runner,
                bare=args.bare,
                publishers=args.publishers,
            )
            result["runs"].append(row)
            if not args.quiet:
                print(f"{broker} at {rate:,.0f}/s: done in {row['seconds']} s", flush=True)
    if not args.quiet:
        print()
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
