"""What the publish stamp costs a publisher: N tasks published with and without it.

Why: ``celery_vitals.agent.install(app)`` in a web server or a script stamps every task
the app publishes (its task sender, wrapped, writes the publication time into the
message's headers, and on RabbitMQ the AMQP ``timestamp`` property too); issue 24 says
at most 2 us per publish. The publishes go to kombu's ``memory://`` transport, in
process: no network, no broker, so the difference between the modes is the stamp's
cost alone (a real broker adds its round trip to every publish, with or without the
stamp, and only its noise to the difference). Four modes, in one run, interleaved in
batches of ``--batch`` publishes (the modes in turn, a different one first each
cycle), each publishing ``--tasks`` tasks in all with ``app.send_task`` (what
``task.delay()`` does: a producer from the pool, the message built and published):

- ``none``: an app without the agent;
- ``noop-receiver``: an app without the agent and a ``before_task_publish`` receiver
  that does nothing: what the stamp would cost as a signal receiver, Celery's dispatch
  of the signal alone (the agent's first design);
- ``header``: an app with the agent, the stamp as on Redis and SQS (the header only);
- ``header+timestamp``: the stamp as on RabbitMQ (the header and the AMQP timestamp).

A publish costs a few hundred us here and the machine's noise is tens of us, so each
mode's figure is the median of its batches, and "over none" the median of the
differences between a batch and the ``none`` batch of the same cycle. That cannot
resolve a few us; the second part can: the task sender alone, each mode's
``send_task_message`` around a sender that does nothing, called with a message of
Celery's shape (``--dispatches`` calls, the best of 5 repeats), which is everything the
stamp adds to a publish but the bytes of one more header.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import celery
from celery import Celery, signals

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


class FixedStamper(Stamper):
    """The agent's stamper, with the "RabbitMQ?" decision given (memory:// would count as
    amqp): one per stamping mode."""

    def __init__(self, timestamp_property: bool) -> None:
        super().__init__()
        self.timestamp_property = timestamp_property

    def decide(self, app: Any) -> bool:
        return self.timestamp_property


def make_apps() -> tuple[dict[str, Celery], list[Stamper]]:
    """One app per mode, the stampers of the two stamping modes."""
    apps: dict[str, Celery] = {}
    stampers: list[Stamper] = []
    for mode in MODES:
        app = Celery(f"publish-stamp-{mode}", broker="memory://", set_as_current=False)
        app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
        if mode.startswith("header"):
            stamper = FixedStamper(mode == "header+timestamp")
            stamper.install(app)
            stampers.append(stamper)
        apps[mode] = app
    return apps, stampers


def noop(**_: Any) -> None:
    """A receiver that does nothing: Celery's dispatch alone."""


def receiver(mode: str) -> None:
    """The no-op receiver connected for its mode only (the signal is the process's)."""
    signals.before_task_publish.disconnect(dispatch_uid=DISPATCH_UID)
    if mode == "noop-receiver":
        signals.before_task_publish.connect(noop, weak=False, dispatch_uid=DISPATCH_UID)


def purge(app: Celery) -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(QUEUE)


def last_message(app: Celery) -> Any:
    with app.connection_for_read() as connection:
        return connection.SimpleQueue(QUEUE).get(timeout=1)


def verify(app: Celery, mode: str) -> None:
    """One publish of the mode carries exactly what the mode says (VerificationError)."""
    purge(app)
    receiver(mode)
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
    try:
        return measure_modes(tasks, batch)
    finally:
        receiver("none")


def us(seconds: float, count: int) -> float:
    return round(seconds / count * 1e6, 3)


def measure_modes(tasks: int, batch: int) -> dict[str, Any]:
    apps, stampers = make_apps()
    for mode in MODES:
        verify(apps[mode], mode)
    for mode in MODES:  # warm-up: connection, producer pool, caches
        receiver(mode)
        publish_batch(apps[mode], batch)
        purge(apps[mode])
    cycles = max(1, tasks // batch)
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for cycle in range(cycles):
        first = cycle % len(MODES)
        for mode in MODES[first:] + MODES[:first]:
            receiver(mode)
            runs[mode].append(publish_batch(apps[mode], batch))
            purge(apps[mode])  # the memory transport keeps every message
    receiver("none")
    for app in apps.values():
        app.close()
    failures = sum(stamper.failures for stamper in stampers)
    if failures:
        raise VerificationError(f"{failures} publishes could not be stamped")
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
    """us per call of each mode's task sender around a sender that does nothing, with a
    message of Celery's shape: none, the sender itself; noop-receiver, the signal sent
    first as Celery's send_task_message sends it; the stamping modes, the agent's
    wrapper."""
    from celery.app.amqp import task_message

    def inner(producer: Any, name: str, message: Any, **kwargs: Any) -> None:
        """Celery's send_task_message with nothing to do."""

    send_signal = signals.before_task_publish.send

    def signalled(producer: Any, name: str, message: Any, **kwargs: Any) -> None:
        send_signal(
            sender=name,
            body=message.body,
            exchange="",
            routing_key=QUEUE,
            declare=[],
            headers=message.headers,
            properties=message.properties,
            retry_policy={},
        )
        inner(producer, name, message, **kwargs)

    app = Celery("publish-stamp-dispatch", broker="memory://", set_as_current=False)
    senders = {
        "none": inner,
        "noop-receiver": signalled,
        "header": FixedStamper(False).wrap(inner, app),
        "header+timestamp": FixedStamper(True).wrap(inner, app),
    }
    message = task_message(
        {"id": "u", "task": "bench.noop"},
        {"correlation_id": "u", "reply_to": ""},
        ((1,), {}, {}),
        None,
    )
    timings: dict[str, float] = {}
    for mode in MODES:
        receiver(mode)
        send = senders[mode]

        def call(send: Callable[..., Any] = send) -> None:
            send(None, "bench.noop", message)

        best = min(timeit.repeat(call, number=calls, repeat=5))
        timings[mode] = us(best, calls)
    receiver("none")
    app.close()
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
    print(f"\nthe task sender alone, best of 5 x {result['dispatches']:,}")
    rows = [["mode", "us per call", "us over none"]]
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
