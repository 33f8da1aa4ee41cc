"""Time to render and serve /metrics with a large but capped set of series.

Why: Prometheus scrapes the exporter every 15 s or so and the scrape holds the
GIL while it renders; issue 7 asks for under 50 ms with 200 task names x
20 queues x 50 workers of series. This feeds a Pipeline (default
configuration) so that every name/queue pair has sent, received, started,
succeeded and failed counts and histogram observations, and 50 workers send
heartbeats; then it times, wall and CPU: prometheus_client.generate_latest
(what /metrics cost before exposition.py), the pipeline's Exposition with
the series unchanged and with every name/queue pair changed since the last
scrape, and GET /metrics through the exporter's own HttpServer, plain and as
Prometheus asks (OpenMetrics, gzip).

    python benchmarks/scrape.py
    python benchmarks/scrape.py --names 200 --queues 20 --workers 50 --runs 20
    python benchmarks/scrape.py --smoke --no-write   # 10 x 5 x 5, 3 runs

Prints a table and writes benchmarks/results/scrape.json.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from celery_vitals.config import build
from celery_vitals.http import HttpServer, make_app
from celery_vitals.pipeline import Pipeline

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_MS = 50.0  # issue 7
EXCEPTIONS = ("ValueError", "ConnectionError", "KeyError")


def populate(pipeline: Pipeline, names: int, queues: int, workers: int) -> dict[str, int]:
    """Two tasks per name/queue pair: one succeeds, one fails; 50 heartbeating workers."""
    handle = pipeline.router.handle
    hosts = [f"celery@worker-{w}.app-7f9c8d" for w in range(workers)]
    now = time.time()
    for w, host in enumerate(hosts):
        for beat in range(2):
            handle(
                {
                    "hostname": host,
                    "utcoffset": 0,
                    "pid": 1000 + w,
                    "clock": beat,
                    "timestamp": now - 4 + 2 * beat,
                    "type": "worker-heartbeat",
                    "freq": 2.0,
                    "active": 3,
                    "processed": 100,
                    "loadavg": [0.5, 0.4, 0.3],
                    "sw_ident": "py-celery",
                    "sw_ver": "5.7.0",
                    "sw_sys": "Linux",
                }
            )
    sequence = 0
    for outcome in ("succeeded", "failed"):
        sequence = feed_round(pipeline, names, queues, hosts, sequence=sequence, outcome=outcome)
    return {"tasks": sequence, "workers": len(pipeline.workers.workers)}


def feed_round(
    pipeline: Pipeline,
    names: int,
    queues: int,
    hosts: Sequence[str],
    *,
    sequence: int,
    outcome: str = "succeeded",
) -> int:
    """One task per name/queue pair (so every pair's series change); returns the last sequence."""
    handle = pipeline.router.handle
    now = time.time()
    for n in range(names):
        name = f"app.module{n % 25}.tasks.job_{n}"
        for q in range(queues):
            queue = f"queue-{q}"
            sequence += 1
            uuid = f"00000000-0000-4000-8000-{sequence:012d}"
            w = sequence % len(hosts)
            host = hosts[w]
            ts = now - 60 + (sequence % 1000) / 1000
            common = {"utcoffset": 0, "uuid": uuid}
            handle(
                {
                    **common,
                    "hostname": "gen4000@web-0",
                    "pid": 4000,
                    "clock": sequence,
                    "timestamp": ts,
                    "type": "task-sent",
                    "name": name,
                    "queue": queue,
                    "routing_key": queue,
                    "exchange": "",
                    "retries": 0,
                    "eta": None,
                    "args": "(1,)",
                    "kwargs": "{}",
                }
            )
            runtime = 0.01 * (1 + sequence % 300)
            last: dict[str, Any]
            if outcome == "succeeded":
                last = {"type": "task-succeeded", "result": "None", "runtime": runtime}
            else:
                exc = EXCEPTIONS[sequence % len(EXCEPTIONS)]
                last = {
                    "type": "task-failed",
                    "exception": f"{exc}('boom')",
                    "traceback": "Traceback (most recent call last):\n...",
                }
            handle(
                [
                    {
                        **common,
                        "hostname": host,
                        "pid": 1000 + w,
                        "timestamp": ts + 0.01,
                        "type": "task-received",
                        "name": name,
                        "retries": 0,
                        "args": "(1,)",
                        "kwargs": "{}",
                        "eta": None,
                        "expires": None,
                    },
                    {
                        **common,
                        "hostname": host,
                        "pid": 1000 + w,
                        "timestamp": ts + 0.02,
                        "type": "task-started",
                    },
                    {
                        **common,
                        "hostname": host,
                        "pid": 1000 + w,
                        "timestamp": ts + 0.02 + runtime,
                        **last,
                    },
                ]
            )
    return sequence


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _time(
    runs: int, once: Callable[[], bytes], between: Callable[[], object] | None = None
) -> dict[str, Any]:
    """Median and p95 of ``once`` over ``runs``; ``between`` runs untimed before each."""
    if between is not None:
        between()
    once()  # warm-up (first-call imports, caches)
    walls, cpus = [], []
    size = 0
    for _ in range(runs):
        if between is not None:
            between()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        size = len(once())
        walls.append((time.perf_counter() - wall0) * 1000)
        cpus.append((time.process_time() - cpu0) * 1000)
    return {
        "runs": runs,
        "bytes": size,
        "wall_ms": {
            "median": round(statistics.median(walls), 2),
            "p95": round(_percentile(walls, 0.95), 2),
            "min": round(min(walls), 2),
            "max": round(max(walls), 2),
        },
        "cpu_ms": {
            "median": round(statistics.median(cpus), 2),
            "p95": round(_percentile(cpus, 0.95), 2),
        },
    }


PROMETHEUS_ACCEPT = {  # what Prometheus 2.x sends: OpenMetrics preferred, gzip
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
# (key, label, how, every pair changed between runs)
CASES = (
    ("prometheus_client", "prometheus_client generate_latest (before)", "direct", False),
    ("render_unchanged", "Exposition.render, series unchanged", "direct", False),
    ("render_changed", "Exposition.render, every pair changed", "direct", True),
    ("http_text_unchanged", "GET /metrics text, unchanged", "http-text", False),
    (
        "http_prometheus_unchanged",
        "GET /metrics as Prometheus (OM+gzip), unchanged",
        "http-prometheus",
        False,
    ),
    (
        "http_prometheus_changed",
        "GET /metrics as Prometheus (OM+gzip), every pair changed",
        "http-prometheus",
        True,
    ),
    # last: it takes the broker label off the exposition (what every series carries
    # since the rules join exporter and agents on it), to show what the label costs
    (
        "render_unchanged_no_broker_label",
        "Exposition.render, series unchanged, without the broker label",
        "direct-no-broker-label",
        False,
    ),
    (
        "render_changed_no_broker_label",
        "Exposition.render, every pair changed, without the broker label",
        "direct-no-broker-label",
        True,
    ),
)


def measure(names: int, queues: int, workers: int, runs: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    pipeline = Pipeline(build({"broker_url": "redis://localhost:6379/0"}), registry)
    t0 = time.perf_counter()
    fed = populate(pipeline, names, queues, workers)
    feed_seconds = time.perf_counter() - t0
    text = generate_latest(registry)
    lines = [line for line in text.decode().splitlines() if line and not line.startswith("#")]
    families = Counter(line.split("{", 1)[0].split(" ", 1)[0] for line in lines)
    tasks = pipeline.tasks
    result: dict[str, Any] = {
        "names": names,
        "queues": queues,
        "workers": workers,
        **fed,
        "feed_seconds": round(feed_seconds, 2),
        "pairs": {
            kind: len(getattr(tasks, kind)) for kind in ("sent", "received", "started", "succeeded")
        },
        "failed_series": len(tasks.failed),
        "samples": len(lines),
        "lines": len(text.splitlines()),
        "bytes": len(text),
        "largest_families": dict(families.most_common(8)),
        "families": dict(sorted(families.items())),
        "target_ms": TARGET_MS,
    }
    t0 = time.perf_counter()
    pipeline.exposition.render()
    result["first_render_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    hosts = list(pipeline.workers.workers)
    sequence = [fed["tasks"]]

    def change_every_pair() -> None:
        sequence[0] = feed_round(pipeline, names, queues, hosts, sequence=sequence[0])

    app = make_app(registry, lambda: True, exposition=pipeline.exposition)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"

    def get(headers: dict[str, str]) -> Callable[[], bytes]:
        def once() -> bytes:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                body: bytes = response.read()
                return body

        return once

    how: dict[str, Callable[[], bytes]] = {
        "http-text": get({}),
        "http-prometheus": get(PROMETHEUS_ACCEPT),
    }
    try:
        for key, label, kind, changed in CASES:
            if key == "prometheus_client":
                once: Callable[[], bytes] = lambda: generate_latest(registry)  # noqa: E731
                n = min(runs, 5)  # over a second a run at full size
            elif kind == "direct":
                once, n = pipeline.exposition.render, runs
            elif kind == "direct-no-broker-label":
                pipeline.exposition.constant = ()
                once, n = pipeline.exposition.render, runs
            else:
                once, n = how[kind], runs
            result[key] = {
                "label": label,
                "every_pair_changed": changed,
                **_time(n, once, change_every_pair if changed else None),
            }
    finally:
        server.stop()
    result["http_note"] = (
        "wall: urllib GET to the last byte, from the same process; CPU: "
        "the whole process (server thread and client)"
    )
    result["meets_target"] = {key: result[key]["wall_ms"]["p95"] < TARGET_MS for key, *_ in CASES}
    return result


def print_report(result: dict[str, Any]) -> None:
    print(
        f"{result['names']} names x {result['queues']} queues ({result['pairs']['sent']:,} "
        f"name/queue series per task counter, {result['failed_series']:,} failed series), "
        f"{result['workers']} workers: {result['samples']:,} samples, "
        f"{result['lines']:,} lines, {result['bytes'] / 1e6:.2f} MB"
    )
    rows = [
        [
            "",
            "wall median ms",
            "wall p95 ms",
            "CPU median ms",
            "CPU p95 ms",
            "bytes",
            f"p95 < {TARGET_MS:g} ms",
        ]
    ]
    for key, *_ in CASES:
        t = result[key]
        rows.append(
            [
                t["label"],
                f"{t['wall_ms']['median']:.1f}",
                f"{t['wall_ms']['p95']:.1f}",
                f"{t['cpu_ms']['median']:.1f}",
                f"{t['cpu_ms']['p95']:.1f}",
                f"{t['bytes']:,}",
                "yes" if result["meets_target"][key] else "NO",
            ]
        )
    print(table(rows))
    print(
        f"first render (every series' text built): {result['first_render_ms']:.0f} ms; "
        f"runs after one warm-up; 'every pair changed': one more task per name/queue pair "
        f"fed (untimed) before each run"
    )
    print(
        "largest families (samples): "
        + ", ".join(f"{k} {v:,}" for k, v in result["largest_families"].items())
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/scrape.py", description="Time to render and serve /metrics."
    )
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="10 names x 5 queues x 5 workers")
    parser.add_argument("--output", type=Path, default=RESULTS / "scrape.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    if args.smoke:
        args.names, args.queues, args.workers, args.runs = 10, 5, 5, 3
    if min(args.names, args.queues, args.workers, args.runs) < 1:
        parser.error("--names, --queues, --workers and --runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "scrape",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **measure(args.names, args.queues, args.workers, args.runs),
    }
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
