"""Event loss at fixed rates, per broker: events published vs counted.

Why: issue 7 asks for zero loss at 50k events/s on both brokers. This is a
thin driver around the throughput benchmark's broker mode (benchmarks/
throughput.py --broker B --rate R): for each broker and rate it publishes the
same synthetic workload (``--tasks`` tasks, about 4.1 events each, so the
run lasts about tasks * 4.1 / rate seconds) at that rate to `celery-vitals
serve` and the bare receiver at once, with the broker's default limits left
in place (Redis' pub/sub output buffer, the event queue's TTL and length cap
on RabbitMQ), and records what each counted. A run that loses events makes
the throughput benchmark raise VerificationError; here that is a result, not
a stop.

    python benchmarks/loss.py                                  # 20k, 50k, 80k x redis, amqp
    python benchmarks/loss.py --brokers redis --rates 20000,50000 --tasks 50000
    python benchmarks/loss.py --smoke --no-write               # in process, no broker

Prints one table and writes benchmarks/results/loss.json (each run's full
throughput JSON goes to benchmarks/results/loss-runs/).
"""

from __future__ import annotations

import argparse
import json
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


def run_one(broker: str, rate: float, tasks: int, *, output: Path | None,
            runner: Runner = throughput.main) -> dict[str, Any]:
    """One fixed-rate run; a VerificationError (events lost) is recorded, not raised."""
    argv = ["--broker", broker, "--rate", f"{rate:g}", "--tasks", str(tasks), "--quiet"]
    argv += ["--output", str(output)] if output is not None else ["--no-write"]
    row: dict[str, Any] = {"broker": broker, "rate": rate, "tasks": tasks, "error": None}
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
        exporter, bare = b["consumers"]["exporter"], b["consumers"]["bare"]
        row.update({
            "published": b["published"]["events"],
            "published_per_second": b["published"]["events_per_second"],
            "publish_seconds": b["published"]["seconds"],
            "exporter_counted": exporter["events"], "exporter_lost": exporter["lost"],
            "bare_counted": bare["events"], "bare_lost": bare["lost"],
            "exporter_cpu_us_per_event": exporter["cpu_us_per_event"],
            "task_counters_match": (b["exporter_task_counters"]
                                    == b["expected_task_counters"]),
            "problems": b["problems"],
        })
    elif result is not None:  # in process (smoke): counted == published, or it raised
        events = result["workload"]["events"]
        row.update({"published": events, "published_per_second": None,
                    "publish_seconds": None, "exporter_counted": events, "exporter_lost": 0,
                    "bare_counted": None, "bare_lost": None,
                    "exporter_cpu_us_per_event": None, "task_counters_match": True,
                    "problems": []})
    return row


def _smoke_runner(argv: Sequence[str]) -> dict[str, Any]:
    """No broker in a test: the throughput smoke run in process, which verifies every count."""
    return throughput.main(["--smoke", "--no-write", "--quiet"])


def _n(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def print_report(result: dict[str, Any]) -> None:
    rows: list[list[object]] = [["broker", "rate/s", "published", "published/s",
                                 "exporter counted", "exporter lost", "bare counted",
                                 "bare lost", "verdict"]]
    for r in result["runs"]:
        lost = r.get("exporter_lost")
        verdict = ("no data" if lost is None else "lossless" if lost == 0 and not r["error"]
                   else "LOSS" if lost else "MISCOUNT")
        rows.append([r["broker"], f"{r['rate']:,.0f}", _n(r.get("published")),
                     _n(r.get("published_per_second")), _n(r.get("exporter_counted")),
                     _n(lost), _n(r.get("bare_counted")), _n(r.get("bare_lost")), verdict])
    print(table(rows))
    for r in result["runs"]:
        if r["error"]:
            print(f"{r['broker']} at {r['rate']:,.0f}/s: {r['error'].splitlines()[0]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/loss.py",
                                     description="Events published vs counted at fixed rates.")
    parser.add_argument("--brokers", default="redis,amqp", help="comma-separated: redis, amqp")
    parser.add_argument("--rates", default="20000,50000,80000",
                        help="comma-separated events/s")
    parser.add_argument("--tasks", type=int, default=100_000,
                        help="tasks per run (~4.1 events each): fixes each run's duration")
    parser.add_argument("--smoke", action="store_true",
                        help="the driver only: throughput's in-process smoke run per rate")
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
    if not args.rates or min(args.rates) <= 0 or args.tasks < 1:
        parser.error("--rates must be positive and --tasks at least 1")
    if args.smoke:
        args.brokers = ["inprocess"]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every broker x rate; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "loss", "mode": "smoke" if args.smoke else "brokers",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "tasks": args.tasks, "runs": [],
    }
    for broker in args.brokers:
        for rate in args.rates:
            output = None if args.no_write else RUNS / f"throughput-{broker}-{rate:g}.json"
            if output is not None:
                output.parent.mkdir(parents=True, exist_ok=True)
            runner = _smoke_runner if args.smoke else throughput.main
            row = run_one(broker, rate, args.tasks, output=output, runner=runner)
            result["runs"].append(row)
            if not args.quiet:
                print(f"{broker} at {rate:,.0f}/s: done in {row['seconds']} s", flush=True)
    if not args.quiet:
        print()
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
