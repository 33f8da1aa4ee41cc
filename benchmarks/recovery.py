"""How long celery-vitals takes to give up on a failing broker, and to consume again once it
is back: each as a ratio to the bound the code sets.

Why: the tests check that both happen (a probe call against a refusing, silent, hung or
killed broker raises by itself; the event stream consumes again after a 30 s outage) with
generous deadlines and no stopwatch, since a timed assertion fails on a loaded CI host for
no fault of the code. How long it takes is measured here, in one run:

- probe give-up: a queue probe (Redis; RabbitMQ with and without the management API)
  built with ``timeout`` T (--timeout, 1 s) polls a closed port, a listener that accepts
  and never answers, a SIGSTOPped redis-server and a SIGKILLed broker (Redis, RabbitMQ);
  each call's wall time is reported as a ratio to T (at most 1 plus a little: the probes
  bound a call by its timeout in total).
- broker return: `celery-vitals serve` consuming events, its broker SIGKILLed for
  --outage seconds (30) and restarted on the same port; the seconds from the broker
  accepting connections again to the exporter showing a heartbeat published after that,
  as a ratio to stream.BACKOFF_MAX (3 s, the longest retry delay). docs/metrics-overview.md:
  "consumes again within seconds of the broker's return however long the outage was".

    python benchmarks/recovery.py
    python benchmarks/recovery.py --brokers redis --outage 10 --runs 5
    python benchmarks/recovery.py --smoke --no-write   # no servers: closed port, listener

Prints a table and writes benchmarks/results/recovery.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.harness import Harness  # noqa: E402

from celery_vitals.brokers.amqp.probe import AmqpProbe  # noqa: E402
from celery_vitals.brokers.redis.probe import RedisProbe  # noqa: E402
from celery_vitals.stream import BACKOFF_MAX  # noqa: E402
from stack.net import LOOPBACK, free_port  # noqa: E402
from stack.rabbitmq import RabbitMQServer  # noqa: E402
from stack.redis import RedisServer  # noqa: E402

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

RESULTS = ROOT / "benchmarks" / "results"
BROKERS = ("redis", "amqp")
Probe = RedisProbe | AmqpProbe


# -- probe give-up ---------------------------------------------------------------------------


def probes_for(url: str, timeout: float, management_port: int | None) -> dict[str, Probe]:
    """The probes of the broker behind ``url``: one Redis, or RabbitMQ without and with
    the management API (``management_port``: where it is, or would be)."""
    if url.startswith("redis"):
        return {"redis": RedisProbe(url, {}, timeout=timeout)}
    management = f"http://{LOOPBACK}:{management_port or free_port()}/"
    return {
        "amqp": AmqpProbe(url, {}, timeout=timeout),
        "amqp+management": AmqpProbe(url, {}, timeout=timeout, management_url=management),
    }


def give_up(probe: Probe, runs: int) -> dict[str, Any]:
    """Seconds each of ``runs`` polls took to raise, and what they raised (a poll that
    succeeds is recorded as such: the fault did not hold)."""
    seconds: list[float] = []
    raised: set[str] = set()
    for _ in range(runs):
        started = time.perf_counter()
        try:
            probe.poll(["celery"])
            raised.add("nothing")
        except Exception as error:  # what a broker failure raises differs by client
            raised.add(type(error).__name__)
        seconds.append(time.perf_counter() - started)
    return {"seconds": [round(s, 3) for s in seconds], "raised": sorted(raised)}


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.create_server((LOOPBACK, 0)) as server:
        yield server.getsockname()[1]


def measure_give_up(
    args: argparse.Namespace, workdir: Path, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def record(fault: str, url: str, management_port: int | None = None) -> None:
        for kind, probe in probes_for(url, args.timeout, management_port).items():
            progress(f"{kind}: {fault}")
            try:
                measured = give_up(probe, args.runs)
            finally:
                probe.close()
            rows.append({"probe": kind, "fault": fault, **measured})

    for broker in args.brokers:
        scheme = "redis://" if broker == "redis" else "amqp://guest:guest@"
        record("closed port", f"{scheme}{LOOPBACK}:{free_port()}/")
        with silent_listener() as port:
            record("silent listener", f"{scheme}{LOOPBACK}:{port}/", management_port=port)
    if args.smoke:
        return rows

    if "redis" in args.brokers:
        server = RedisServer(workdir / "redis-stopped").start()
        try:
            os.kill(server.pid, signal.SIGSTOP)
            try:
                record("redis-server SIGSTOPped", server.url())
            finally:
                os.kill(server.pid, signal.SIGCONT)
            server.kill()
            record("redis-server SIGKILLed", server.url())
        finally:
            server.stop()
    if "amqp" in args.brokers:
        rabbit = RabbitMQServer(workdir / "rabbit-killed").start()
        try:
            rabbit.kill()
            record("rabbitmq-server SIGKILLed", rabbit.url, rabbit.management_port)
        finally:
            rabbit.stop()
    return rows


# -- broker return ---------------------------------------------------------------------------


def measure_return(
    args: argparse.Namespace, workdir: Path, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for broker in args.brokers:
        # the exporter stops before its broker: the harness is left first
        with contextlib.ExitStack() as stack, Harness(workdir / f"return-{broker}") as harness:
            server: Any
            if broker == "redis":
                server = harness.redis()
                url = server.url()
            else:
                server = RabbitMQServer(workdir / "rabbit-return").start()
                stack.callback(server.stop)
                url = server.url
            exporter = harness.exporter(
                url, "--queue-poll-interval", "0", "--no-enable-events", name=f"exporter-{broker}"
            )
            harness.sync_events(exporter, url)
            seconds: list[float] = []
            for run in range(args.return_runs):
                progress(f"{broker}: outage {run + 1} of {args.return_runs}, {args.outage:g} s")
                server.kill()
                time.sleep(args.outage)
                server.restart()  # returns once the broker accepts connections
                back = time.perf_counter()
                harness.sync_events(exporter, url, timeout=120)
                seconds.append(time.perf_counter() - back)
            reconnects = exporter.scrape().get("celery_vitals_event_stream_reconnects_total")
        rows.append(
            {
                "broker": broker,
                "outage_s": args.outage,
                "seconds": [round(s, 2) for s in seconds],
                "reconnects": reconnects,
            }
        )
    return rows


# -- report ----------------------------------------------------------------------------------


def summarise(seconds: Sequence[float], bound: float) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        "max_ratio": round(max(seconds) / bound, 2),
    }


def print_report(result: dict[str, Any]) -> None:
    timeout = result["timeout_s"]
    print(f"Probe give-up: each poll's wall time / the probe's timeout ({timeout:g} s)")
    rows: list[list[object]] = [
        ["probe", "fault", "polls", "raised", "median s", "max s", "max / timeout"]
    ]
    for row in result["give_up"]:
        rows.append(
            [
                row["probe"],
                row["fault"],
                len(row["seconds"]),
                ", ".join(row["raised"]),
                f"{row['median_s']:.3f}",
                f"{row['max_s']:.3f}",
                f"{row['max_ratio']:.2f}",
            ]
        )
    print(table(rows))
    if result["broker_return"]:
        print(
            f"\nBroker return: seconds from the broker accepting connections to the exporter "
            f"consuming / the longest retry delay ({result['backoff_max_s']:g} s)"
        )
        rows = [["broker", "outage s", "runs", "median s", "max s", "max / backoff cap"]]
        for row in result["broker_return"]:
            rows.append(
                [
                    row["broker"],
                    f"{row['outage_s']:g}",
                    len(row["seconds"]),
                    f"{row['median_s']:.2f}",
                    f"{row['max_s']:.2f}",
                    f"{row['max_ratio']:.2f}",
                ]
            )
        print(table(rows))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/recovery.py",
        description="Probe give-up and event-stream return, as ratios of their bounds.",
    )
    parser.add_argument("--brokers", default="redis,amqp", help="redis, amqp or both")
    parser.add_argument("--timeout", type=float, default=1.0, help="the probes' timeout")
    parser.add_argument("--runs", type=int, default=3, help="polls per probe and fault")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker is down")
    parser.add_argument("--return-runs", type=int, default=1, help="outages per broker")
    parser.add_argument(
        "--smoke", action="store_true", help="closed port and listener only; no servers"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "recovery.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not args.brokers or set(args.brokers) - set(BROKERS):
        parser.error(f"--brokers: one or more of {', '.join(BROKERS)}")
    if min(args.runs, args.return_runs) < 1 or args.timeout <= 0 or args.outage < 0:
        parser.error("--runs and --return-runs at least 1, --timeout above 0, --outage >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="recovery-") as tmp:
        workdir = Path(tmp)
        give_ups = measure_give_up(args, workdir, progress)
        returns = [] if args.smoke else measure_return(args, workdir, progress)
    for row in give_ups:
        row.update(summarise(row["seconds"], args.timeout))
    for row in returns:
        row.update(summarise(row["seconds"], BACKOFF_MAX))
    result: dict[str, Any] = {
        "benchmark": "recovery",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "timeout_s": args.timeout,
        "backoff_max_s": BACKOFF_MAX,
        "give_up": give_ups,
        "broker_return": returns,
    }
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
