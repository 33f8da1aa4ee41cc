"""Many scrapers at once: 50 concurrent GET /metrics of an exporter with about 2,000 series.

Why: several Prometheus replicas (HA pairs, a federation, an agent) and
people with curl scrape one exporter at the same moment. With socketserver's
default listen backlog of 5, the connections past the accept queue waited for
TCP SYN retries (1, 3, 7 s): all answered, but the median took 1.45 s and the
slowest 7.9 s. The exporter now listens with a backlog of 128 and scrapes that
wait for a render share the next one (exposition.py). This measures both
backlogs in one run, the exporter in its own process (its GIL is not the
clients'), each round 50 threads that connect at once and GET as Prometheus
does (OpenMetrics, gzip).

    python benchmarks/concurrent_scrapes.py
    python benchmarks/concurrent_scrapes.py --clients 50 --rounds 10
    python benchmarks/concurrent_scrapes.py --smoke --no-write

Prints a table and writes benchmarks/results/concurrent_scrapes.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from celery_vitals import http
from celery_vitals.config import build
from celery_vitals.pipeline import Pipeline

try:
    from benchmarks.report import publish, table
    from benchmarks.scrape import PROMETHEUS_ACCEPT, _percentile, populate
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]
    from scrape import PROMETHEUS_ACCEPT, _percentile, populate  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_S = 1.0  # each of 50 concurrent scrapes answered within 1 s
OLD_BACKLOG = 5  # socketserver's default, what the exporter listened with before


def serve(backlog: int, args: argparse.Namespace, ready: Any, port: Any, stop: Any) -> None:
    """The exporter's pipeline and HTTP server, in a process of its own."""
    http.LISTEN_BACKLOG = backlog
    registry = CollectorRegistry()
    pipeline = Pipeline(build({"broker_url": "redis://localhost:6379/0"}), registry)
    populate(pipeline, args.names, args.queues, args.workers)
    server = http.HttpServer(
        http.make_app(registry, lambda: True, exposition=pipeline.exposition), "127.0.0.1", 0
    )
    server.start()
    port.value = server.port
    ready.set()
    stop.wait()
    server.stop()


CLIENT_TIMEOUT = 15.0  # seconds; a scrape that takes longer counts as failed


def one_round(url: str, clients: int) -> tuple[list[float], list[str]]:
    """``clients`` threads released together, each one GET on a new connection: the seconds
    each took, and the failures."""
    barrier = threading.Barrier(clients)
    latencies: list[float] = []
    failures: list[str] = []

    def scrape() -> None:
        request = urllib.request.Request(url, headers=PROMETHEUS_ACCEPT)
        barrier.wait()
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
                response.read()
                if response.status != 200:
                    failures.append(f"HTTP {response.status}")
        except OSError as error:
            failures.append(repr(error))
        latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=scrape) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures


def measure(backlog: int, args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    port = context.Value("i", 0)
    process = context.Process(target=serve, args=(backlog, args, ready, port, stop))
    process.start()
    try:
        if not ready.wait(timeout=60):
            raise RuntimeError("the exporter process did not start")
        url = f"http://127.0.0.1:{port.value}/metrics"
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode()
        samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        latencies: list[float] = []
        failures: list[str] = []
        for _ in range(args.rounds):
            took, failed = one_round(url, args.clients)
            latencies += took
            failures += failed
    finally:
        stop.set()
        process.join(timeout=30)
    ms = sorted(1000 * s for s in latencies)
    return {
        "backlog": backlog,
        "samples": samples,
        "scrapes": len(ms),
        "ms": {
            "median": round(statistics.median(ms), 1),
            "p95": round(_percentile(ms, 0.95), 1),
            "max": round(ms[-1], 1),
        },
        "over_1s": sum(1 for value in ms if value > 1000 * TARGET_S),
        "failed": len(failures),
        "failures": sorted(set(failures))[:5],
    }


def print_report(result: dict[str, Any]) -> None:
    now, before = result["backlog_128"], result["backlog_5"]
    print(
        f"{result['clients']} concurrent scrapes x {result['rounds']} rounds, "
        f"{now['samples']:,} samples per scrape (OpenMetrics, gzip)"
    )
    rows = [
        [
            "listen backlog",
            "median ms",
            "p95 ms",
            "max ms",
            f"over {TARGET_S:g} s",
            f"failed (>{CLIENT_TIMEOUT:g} s or refused)",
        ]
    ]
    for case in (before, now):
        rows.append(
            [
                str(case["backlog"]),
                f"{case['ms']['median']:.1f}",
                f"{case['ms']['p95']:.1f}",
                f"{case['ms']['max']:.1f}",
                f"{case['over_1s']} of {case['scrapes']}",
                str(case["failed"]),
            ]
        )
    print(table(rows))
    print(f"slowest scrape, backlog 5 / backlog 128: {result['max_ratio']:.0f}x")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/concurrent_scrapes.py",
        description="50 concurrent scrapes, backlog 5 and 128.",
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    # 18 names x 2 queues x 5 workers: about 2,000 samples
    parser.add_argument("--names", type=int, default=18)
    parser.add_argument("--queues", type=int, default=2)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="10 clients, 2 rounds")
    parser.add_argument("--output", type=Path, default=RESULTS / "concurrent_scrapes.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.rounds = 10, 2
    if min(args.clients, args.rounds, args.names, args.queues, args.workers) < 1:
        parser.error("every count must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    before = measure(OLD_BACKLOG, args)
    now = measure(http.LISTEN_BACKLOG, args)
    result: dict[str, Any] = {
        "benchmark": "concurrent_scrapes",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "clients": args.clients,
        "rounds": args.rounds,
        "target_s": TARGET_S,
        "backlog_5": before,
        "backlog_128": now,
        "max_ratio": round(before["ms"]["max"] / max(now["ms"]["max"], 0.001), 1),
        "meets_target": now["ms"]["max"] <= 1000 * TARGET_S and now["failed"] == 0,
    }
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
