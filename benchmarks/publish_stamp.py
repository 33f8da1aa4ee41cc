"""What the publish stamp costs a publisher: N tasks published with and without it.

Why: ``celery_vitals.agent.install(app)`` in a web server or a script stamps every task
it publishes (a ``before_task_publish`` receiver writes the publication time into the
message's headers, and on RabbitMQ the AMQP ``timestamp`` property too); issue 24 says
at most 2 us per publish. The publishes go to kombu's ``memory://`` transport, in
process: no network, no broker, so the difference between the modes is the stamp's
cost alone (a real broker adds its round trip to every publish, with or without the
stamp, and only its noise to the difference). Four modes, in one run, interleaved in
batches of ``--batch`` publishes (the modes in turn, a different one first each
cycle), each publishing ``--tasks`` tasks in all with ``app.send_task`` (what
``task.delay()`` does: a producer from the pool, the message built and published):

- ``none``: no receiver connected (the app without the agent);
- ``noop-receiver``: a receiver that does nothing: what Celery's signal dispatch
  costs once any receiver is connected (before Celery 5.7 it skips the signal
  without receivers), whoever connects it;
- ``header``: the stamp as on Redis and SQS (the header only);
- ``header+timestamp``: the stamp as on RabbitMQ (the header and the AMQP timestamp).

A publish costs a few hundred us here and the machine's noise is tens of us, so each
mode's figure is the median of its batches, and "over none" the median of the
differences between a batch and the ``none`` batch of the same cycle. That cannot
resolve a few us; the second part can: the signal alone, ``before_task_publish.send``
with the arguments ``send_task_message`` passes, timed per mode (``--dispatches``
calls, the best of 5 repeats), which is everything the stamp adds to a publish but
the bytes of one more header.

    python benchmarks/publish_stamp.py                   # 100,000 tasks per mode
    python benchmarks/publish_stamp.py --tasks 20000 --batch 500
    python benchmarks/publish_stamp.py --smoke --no-write  # 2,000 tasks per mode

Prints a table (us per publish, wall and CPU, and the ratio against ``none``) and
writes benchmarks/results/publish_stamp.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import celery
from celery import Celery, signals

from celery_vitals import agent
from celery_vitals.agent.publish import DISPATCH_UID as AGENT_DISPATCH_UID
from celery_vitals.agent.publish import Stamper
from celery_vitals.stamp import HEADER

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODES = ("none", "noop-receiver", "header", "header+timestamp")
QUEUE = "publish-stamp"
DISPATCH_UID = "celery-vitals-benchmark-publish-stamp"
TARGET_US = 2.0  # issue 24


def make_app() -> tuple[Celery, Stamper]:
    """The app, and the receiver install(app) connects (its own instance here: the
    benchmark connects and disconnects it per mode, and leaves nothing connected)."""
    app = Celery("publish-stamp", broker="memory://", set_as_current=False)
    app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
    return app, Stamper(lambda: [(app, None)])


def noop(**_: Any) -> None:
    """A receiver that does nothing: Celery's dispatch alone."""


def set_mode(app: Celery, stamper: Stamper, mode: str) -> None:
    signals.before_task_publish.disconnect(dispatch_uid=DISPATCH_UID)
    if mode == "noop-receiver":
        signals.before_task_publish.connect(noop, weak=False, dispatch_uid=DISPATCH_UID)
    elif mode != "none":
        signals.before_task_publish.connect(stamper, weak=False, dispatch_uid=DISPATCH_UID)
        # which transports take the AMQP timestamp is the broker's (memory:// would count
        # as amqp): set per mode
        stamper.assume(app, mode == "header+timestamp")


def purge(app: Celery) -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(QUEUE)


def last_message(app: Celery) -> Any:
    with app.connection_for_read() as connection:
        return connection.SimpleQueue(QUEUE).get(timeout=1)


def verify(app: Celery, stamper: Stamper, mode: str) -> None:
    """One publish of the mode carries exactly what the mode says (VerificationError)."""
    purge(app)
    set_mode(app, stamper, mode)
    app.send_task("bench.noop", (1,))
    message = last_message(app)
    stamped = HEADER in message.headers
    timestamped = "timestamp" in message.properties
    expected = (mode.startswith("header"), mode == "header+timestamp")
    if (stamped, timestamped) != expected:
        raise VerificationError(f"{mode}: header {stamped}, timestamp property {timestamped}")
    purge(app)


class VerificationError(AssertionError):
    pass


def publish_batch(app: Celery, count: int) -> tuple[float, float]:
    """Wall and CPU seconds to publish ``count`` tasks."""
    send = app.send_task
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        send("bench.noop", (i,))
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(tasks: int, batch: int) -> dict[str, Any]:
    # "none" is no receiver at all: the process's own agent stamper (when something here
    # ran install(), as the smoke test's neighbours do) is set aside for the run
    agent_stamper = signals.before_task_publish.disconnect(dispatch_uid=AGENT_DISPATCH_UID)
    try:
        return measure_modes(tasks, batch)
    finally:
        if agent_stamper:
            signals.before_task_publish.connect(
                agent.stamper, weak=False, dispatch_uid=AGENT_DISPATCH_UID
            )


def us(seconds: float, count: int) -> float:
    return round(seconds / count * 1e6, 3)


def measure_modes(tasks: int, batch: int) -> dict[str, Any]:
    app, stamper = make_app()
    for mode in MODES:
        verify(app, stamper, mode)
    set_mode(app, stamper, "none")
    publish_batch(app, batch)  # warm-up: connection, producer pool, caches
    purge(app)
    cycles = max(1, tasks // batch)
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for cycle in range(cycles):
        first = cycle % len(MODES)
        for mode in MODES[first:] + MODES[:first]:
            set_mode(app, stamper, mode)
            runs[mode].append(publish_batch(app, batch))
            purge(app)  # the memory transport keeps every message
    set_mode(app, stamper, "none")
    app.close()
    if stamper.failures:
        raise VerificationError(f"{stamper.failures} publishes could not be stamped")
    result: dict[str, Any] = {"tasks_per_mode": cycles * batch, "batch": batch}
    none_cpu = [c for _, c in runs["none"]]
    base_cpu = statistics.median(none_cpu)
    base_wall = statistics.median(w for w, _ in runs["none"])
    for mode in MODES:
        cpu = [c for _, c in runs[mode]]
        wall = statistics.median(w for w, _ in runs[mode])
        over = [c - n for c, n in zip(cpu, none_cpu, strict=True)]
        quartiles = statistics.quantiles(over, n=4) if len(over) > 1 else [over[0]] * 3
        result[mode] = {
            "wall_us_per_publish": us(wall, batch),
            "cpu_us_per_publish": us(statistics.median(cpu), batch),
            "cpu_ratio": round(statistics.median(cpu) / base_cpu, 4),
            "wall_ratio": round(wall / base_wall, 4),
            "cpu_us_over_none": us(statistics.median(over), batch),
            "cpu_us_over_none_quartiles": [us(quartiles[0], batch), us(quartiles[2], batch)],
            "batches": len(cpu),
        }
    return result


def dispatch_only(calls: int) -> dict[str, float]:
    """us per before_task_publish.send() as send_task_message calls it, per mode."""
    app, stamper = make_app()
    stamper.assume(app, False)
    headers: dict[str, Any] = {"id": "u", "task": "bench.noop"}
    properties: dict[str, Any] = {"correlation_id": "u", "reply_to": ""}
    send = signals.before_task_publish.send
    arguments = {
        "sender": "bench.noop",
        "body": ((1,), {}, {}),
        "exchange": "",
        "routing_key": QUEUE,
        "declare": [],
        "headers": headers,
        "properties": properties,
        "retry_policy": {},
    }
    timings: dict[str, float] = {}
    for mode in MODES:
        set_mode(app, stamper, mode)
        stamper.assume(app, mode == "header+timestamp")
        best = min(timeit.repeat(lambda: send(**arguments), number=calls, repeat=5))
        timings[mode] = us(best, calls)
    set_mode(app, stamper, "none")
    return timings


def print_report(result: dict[str, Any]) -> None:
    print(
        f"publish of {result['tasks_per_mode']:,} tasks per mode to memory:// "
        f"(medians of batches of {result['batch']:,}), Celery {result['celery']}"
    )
    rows: list[list[object]] = [
        [
            "mode",
            "wall us/publish",
            "CPU us/publish",
            "CPU ratio",
            "CPU us over none (quartiles)",
        ]
    ]
    for mode in MODES:
        m = result[mode]
        rows.append(
            [
                mode,
                f"{m['wall_us_per_publish']:.2f}",
                f"{m['cpu_us_per_publish']:.2f}",
                f"{m['cpu_ratio']:.3f}",
                f"{m['cpu_us_over_none']:+.2f} "
                f"({m['cpu_us_over_none_quartiles'][0]:+.2f} to "
                f"{m['cpu_us_over_none_quartiles'][1]:+.2f})",
            ]
        )
    print(table(rows))
    dispatch = result["dispatch"]
    print(f"\nthe signal alone: before_task_publish.send(), best of 5 x {result['dispatches']:,}")
    rows = [["mode", "us per send", "us over none"]]
    rows += [
        [mode, f"{dispatch[mode]:.2f}", f"{dispatch[mode] - dispatch['none']:+.2f}"]
        for mode in MODES
    ]
    print(table(rows))
    print(f"target: at most {TARGET_US} us per publish over none (issue 24)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/publish_stamp.py",
        description="What the publish stamp costs a publisher (memory:// transport).",
    )
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per mode")
    parser.add_argument("--batch", type=int, default=1_000, help="publishes per batch")
    parser.add_argument("--dispatches", type=int, default=200_000, help="sends timed per mode")
    parser.add_argument("--smoke", action="store_true", help="2,000 tasks per mode, by 500")
    parser.add_argument("--output", type=Path, default=RESULTS / "publish_stamp.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks, args.batch, args.dispatches = 2_000, 500, 2_000
    if not 1 <= args.batch <= args.tasks:
        parser.error("--batch must be between 1 and --tasks")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "publish_stamp",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "celery": celery.__version__,
        "broker": "memory://",
        **measure(args.tasks, args.batch),
        "dispatches": args.dispatches,
        "dispatch": dispatch_only(args.dispatches),
    }
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
