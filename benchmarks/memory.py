"""Peak memory of celery-vitals' trackers under a million distinct tasks.

Why: the exporter keeps a map of task uuids it has seen but not seen finish,
capped (``--max-tracked-tasks``, 100,000 by default), and caps every label's
distinct values. Memory must flatten once the caps are reached (issue 7).
Each case runs in a fresh subprocess so its peak RSS is its own; a Pipeline
(guards, trackers, router; no broker, no HTTP) with the default configuration
is fed synthetic task events, generated lazily in batches, over 200 task
names x 20 queues and 20 workers (with heartbeats).

    python benchmarks/memory.py                 # cases A, B and C
    python benchmarks/memory.py --cases C       # one case
    python benchmarks/memory.py --smoke --no-write   # a few thousand tasks, cap 1,000

Cases:
  A  1,000,000 tasks run to completion (sent, received, started, succeeded)
  B    100,000 tasks in flight (sent and received, never finished)
  C  1,000,000 tasks that never finish: the uuid map evicts at its cap

Peak RSS (getrusage ru_maxrss and /proc/self/status VmHWM) is sampled after
every 100k tasks. Prints a table, writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
import tracemalloc
import uuid as uuid_module
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

NAMES = 200
QUEUES = 20
WORKERS = 20
BATCH = 24  # a worker's event buffer (Celery's default)
CHUNK = 1000  # tasks generated and fed at a time
SIM_RATE = 2000.0  # simulated tasks per second: spaces the timestamps
CASES: dict[str, dict[str, Any]] = {
    "A": {"tasks": 1_000_000, "finish": True, "what": "tasks run to completion"},
    "B": {
        "tasks": 100_000,
        "finish": False,
        "what": "tasks in flight (sent + received), under the cap",
    },
    "C": {
        "tasks": 1_000_000,
        "finish": False,
        "what": "tasks never finished (uuid map evicts at its cap)",
    },
}


def task_names() -> list[tuple[str, str]]:
    """200 names, each routed to one of 20 queues (as a Celery app routes them)."""
    return [(f"app.module{i % 25}.tasks.job_{i}", f"queue-{i % QUEUES}") for i in range(NAMES)]


def _memory() -> dict[str, int]:
    """Peak and current RSS in KiB: ru_maxrss (Linux: KiB), VmHWM and VmRSS."""
    status: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                status[key] = int(value.split()[0])
    except OSError:
        pass
    return {
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vmhwm_kib": status.get("VmHWM", 0),
        "vmrss_kib": status.get("VmRSS", 0),
    }


def bodies(
    tasks: int, finish: bool, *, seed: int = 11, chunk: int = CHUNK
) -> Iterator[tuple[int, list[dict[str, Any] | list[Any]]]]:
    """Yield (tasks so far, message bodies for the next ``chunk`` tasks), lazily.

    Per chunk: each task's task-sent on its own (as a client publishes it), then
    the worker events (task-received, and task-started/task-succeeded when
    ``finish``) in per-worker lists of up to 24, and one heartbeat per worker
    every 2 s of simulated time.
    """
    rng = random.Random(seed)
    names = task_names()
    hosts = [f"celery@worker-{w}.app-7f9c8d" for w in range(WORKERS)]
    clocks = [0] * WORKERS
    processed = [0] * WORKERS
    base = time.time() - tasks / SIM_RATE - 60
    next_beat = base
    done = 0
    while done < tasks:
        n = min(chunk, tasks - done)
        out: list[dict[str, Any] | list[Any]] = []
        buffers: list[list[dict[str, Any]]] = [[] for _ in range(WORKERS)]

        def put(
            w: int,
            event: dict[str, Any],
            buffers: list[list[dict[str, Any]]] = buffers,
            out: list[dict[str, Any] | list[Any]] = out,
        ) -> None:
            clocks[w] += 1
            event["clock"] = clocks[w]
            buffers[w].append(event)
            if len(buffers[w]) >= BATCH:
                out.append(buffers[w])
                buffers[w] = []

        later: list[tuple[int, str, str, str, float]] = []
        for i in range(done, done + n):
            name, queue = names[rng.randrange(NAMES)]
            task_id = str(uuid_module.UUID(int=rng.getrandbits(128), version=4))
            ts = base + i / SIM_RATE
            out.append(
                {
                    "hostname": "gen4000@web-0",
                    "utcoffset": 0,
                    "pid": 4000,
                    "clock": i,
                    "timestamp": ts,
                    "type": "task-sent",
                    "uuid": task_id,
                    "root_id": task_id,
                    "parent_id": None,
                    "name": name,
                    "args": f"({rng.randrange(10**6)},)",
                    "kwargs": "{'tenant': 'acme'}",
                    "retries": 0,
                    "eta": None,
                    "expires": None,
                    "queue": queue,
                    "exchange": "",
                    "routing_key": queue,
                }
            )
            later.append((rng.randrange(WORKERS), task_id, name, queue, ts))
        for w, task_id, name, _queue, ts in later:
            host = hosts[w]
            put(
                w,
                {
                    "hostname": host,
                    "utcoffset": 0,
                    "pid": 1000 + w,
                    "timestamp": ts + 0.01,
                    "type": "task-received",
                    "uuid": task_id,
                    "name": name,
                    "args": "(1,)",
                    "kwargs": "{}",
                    "root_id": task_id,
                    "parent_id": None,
                    "retries": 0,
                    "eta": None,
                    "expires": None,
                },
            )
            if finish:
                put(
                    w,
                    {
                        "hostname": host,
                        "utcoffset": 0,
                        "pid": 1000 + w,
                        "timestamp": ts + 0.02,
                        "type": "task-started",
                        "uuid": task_id,
                    },
                )
                runtime = rng.expovariate(1 / 0.08)
                put(
                    w,
                    {
                        "hostname": host,
                        "utcoffset": 0,
                        "pid": 1000 + w,
                        "timestamp": ts + 0.02 + runtime,
                        "type": "task-succeeded",
                        "uuid": task_id,
                        "result": "None",
                        "runtime": runtime,
                    },
                )
                processed[w] += 1
        out.extend(b for b in buffers if b)
        done += n
        now = base + done / SIM_RATE
        while next_beat <= now:
            for w in range(WORKERS):
                clocks[w] += 1
                out.append(
                    {
                        "hostname": hosts[w],
                        "utcoffset": 0,
                        "pid": 1000 + w,
                        "clock": clocks[w],
                        "timestamp": next_beat,
                        "type": "worker-heartbeat",
                        "freq": 2.0,
                        "active": 4,
                        "processed": processed[w],
                        "loadavg": [0.5, 0.4, 0.3],
                        "sw_ident": "py-celery",
                        "sw_ver": "5.7.0",
                        "sw_sys": "Linux",
                    }
                )
            next_beat += 2.0
        yield done, out


def run_case(
    case: str, tasks: int, every: int, max_tracked: int | None, trace: bool = False
) -> dict[str, Any]:
    """Feed one case into a fresh Pipeline in this process; returns samples and end state.

    At every sample /metrics is rendered (as a scrape would), so its text
    cache is in the figures; with ``trace``, tracemalloc also reports the
    Python heap (live objects), which tells growth of the data apart from
    the allocator keeping freed memory (about 3x slower).
    """
    from celery_vitals.config import build
    from celery_vitals.pipeline import Pipeline

    raw: dict[str, Any] = {"broker_url": "redis://localhost:6379/0"}
    if max_tracked is not None:
        raw["max_tracked_tasks"] = max_tracked
    config = build(raw)
    pipeline = Pipeline(config)
    handle, tracker = pipeline.router.handle, pipeline.tasks
    finish = CASES[case]["finish"]
    if trace:
        tracemalloc.start()

    def sample(done: int, seconds: float) -> dict[str, Any]:
        scrape = len(pipeline.exposition.render())
        heap = {"traced_kib": tracemalloc.get_traced_memory()[0] // 1024} if trace else {}
        return {
            "tasks": done,
            "seconds": round(seconds, 2),
            "tracked": len(tracker.tasks),
            "scrape_bytes": scrape,
            **heap,
            **_memory(),
        }

    samples = [sample(0, 0.0)]
    t0 = time.perf_counter()
    next_sample = every
    for done, chunk in bodies(tasks, finish):
        for body in chunk:
            handle(body)
        if done >= next_sample or done == tasks:
            samples.append(sample(done, time.perf_counter() - t0))
            next_sample += every
    by_type = {k: v for k, v in pipeline.router.events_by_type.items() if v}
    return {
        "case": case,
        "what": CASES[case]["what"],
        "tasks": tasks,
        "finish": finish,
        "max_tracked_tasks": config.max_tracked_tasks,
        "seconds": round(time.perf_counter() - t0, 2),
        "events": sum(by_type.values()),
        "by_type": by_type,
        "tracked": len(tracker.tasks),
        "evictions": dict(tracker.evictions),
        "finished_map": len(tracker._finished),
        "sent": sum(tracker.sent.values()),
        "succeeded": sum(tracker.succeeded.values()),
        "series": {
            "sent": len(tracker.sent),
            "received": len(tracker.received),
            "succeeded": len(tracker.succeeded),
        },
        "workers": len(pipeline.workers.workers),
        "folded": {g.label: sum(g.folded.values()) for g in pipeline.guards.values() if g.folded},
        "skipped": dict(tracker.skipped),
        "samples": samples,
        "peak": _memory(),
    }


def check(result: dict[str, Any]) -> list[str]:
    """What the caps promise: exact counts at the end of a case."""
    tasks, cap = result["tasks"], result["max_tracked_tasks"]
    problems = []
    want_tracked = 0 if result["finish"] else min(tasks, cap)
    want_evicted = 0 if result["finish"] else max(0, tasks - cap)
    if result["tracked"] != want_tracked:
        problems.append(
            f"case {result['case']}: {result['tracked']} tasks tracked, expected {want_tracked}"
        )
    if result["evictions"] != {"capacity": want_evicted, "age": 0}:
        problems.append(
            f"case {result['case']}: evictions {result['evictions']}, "
            f"expected {want_evicted} by capacity"
        )
    if result["sent"] != tasks:
        problems.append(f"case {result['case']}: {result['sent']} sent counted, {tasks} sent")
    if result["finish"] and result["succeeded"] != tasks:
        problems.append(f"case {result['case']}: {result['succeeded']} succeeded counted")
    if result["folded"] or result["skipped"]:
        problems.append(
            f"case {result['case']}: folded {result['folded']}, skipped {result['skipped']}"
        )
    return problems


def run_subprocess(
    case: str, tasks: int, every: int, max_tracked: int | None, trace: bool = False
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        case,
        "--tasks",
        str(tasks),
        "--every",
        str(every),
        *(["--trace"] if trace else []),
    ]
    if max_tracked is not None:
        command += ["--max-tracked-tasks", str(max_tracked)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def print_report(result: dict[str, Any]) -> None:
    for case in result["cases"].values():
        print(
            f"\ncase {case['case']}: {case['what']} ({case['tasks']:,} tasks, "
            f"{case['events']:,} events, {case['seconds']} s, "
            f"max_tracked_tasks {case['max_tracked_tasks']:,})"
        )
        rows: list[list[object]] = [
            [
                "tasks",
                "tracked",
                "peak RSS MiB (ru_maxrss)",
                "VmHWM MiB",
                "VmRSS MiB",
                "Python heap MiB",
                "/metrics bytes",
                "s",
            ]
        ]
        for s in case["samples"]:
            heap = _mib(s["traced_kib"]) if "traced_kib" in s else "-"
            rows.append(
                [
                    f"{s['tasks']:,}",
                    f"{s['tracked']:,}",
                    _mib(s["ru_maxrss_kib"]),
                    _mib(s["vmhwm_kib"]),
                    _mib(s["vmrss_kib"]),
                    heap,
                    f"{s['scrape_bytes']:,}",
                    s["seconds"],
                ]
            )
        print(table(rows))
        print(
            f"end: {case['tracked']:,} tracked, evictions {case['evictions']}, "
            f"finished-uuid map {case['finished_map']:,}, {case['workers']} workers, "
            f"series sent/received/succeeded {case['series']}"
        )
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/memory.py", description="Peak RSS of the trackers under many tasks."
    )
    parser.add_argument("--cases", default="A,B,C", help="comma-separated subset of A, B, C")
    parser.add_argument("--tasks", type=int, default=None, help="override every case's task count")
    parser.add_argument("--every", type=int, default=100_000, help="sample every N tasks")
    parser.add_argument(
        "--max-tracked-tasks",
        type=int,
        default=None,
        help="the uuid map's cap (default: the exporter's, 100,000)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3,000 tasks per case (800 for B), cap 1,000, sample every 1,000",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="also report the Python heap (tracemalloc; about 3x slower)",
    )
    parser.add_argument("--child", choices=tuple(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / "memory.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    args.cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    if not args.cases or not set(args.cases) <= set(CASES):
        parser.error("--cases: expected some of A, B, C")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the cases (one subprocess each); returns the results, also printed and written."""
    args = parse_args(argv)
    if args.child:
        json.dump(
            run_case(args.child, args.tasks, args.every, args.max_tracked_tasks, args.trace),
            sys.stdout,
        )
        return {}
    result: dict[str, Any] = {
        "benchmark": "memory",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "names": NAMES,
        "queues": QUEUES,
        "workers": WORKERS,
        "cases": {},
        "problems": [],
    }
    for case in args.cases:
        tasks = args.tasks or CASES[case]["tasks"]
        every, cap = args.every, args.max_tracked_tasks
        if args.smoke:
            tasks, every, cap = (800 if case == "B" else 3000), 1000, cap or 1000
        outcome = run_subprocess(case, tasks, every, cap, args.trace)
        result["cases"][case] = outcome
        result["problems"] += check(outcome)
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    outcome = main(sys.argv[1:])
    if outcome.get("problems"):
        raise SystemExit(1)
