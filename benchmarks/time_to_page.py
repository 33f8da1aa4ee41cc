"""Time to page: real incidents on real workers, through the shipped rules and Alertmanager.

Why: docs/runbooks.md computes each alert's time to page with promtool; issue 13
asks for it measured, with real workers, real faults, one real Prometheus
running the shipped rule file and one real Alertmanager routing and
inhibiting as deploy/alertmanager.yml does, and for the pages that come on top
(the target is none).

One run starts, side by side, one isolated stack per incident: its own
redis-server, its own Celery worker(s) of tests/support/alerts_app.py, its own
`celery-vitals serve` and its own load, scraped as job `celery-vitals-<incident>`
(named by its exporter's --broker-name, the label the alerts carry). One Prometheus scrapes
them all and evaluates the rules every 15 s, as deploy/prometheus does; one
Alertmanager runs a copy of deploy/alertmanager.yml whose two webhook URLs
point at a receiver in this process, which records every notification. Every
stack runs healthy for --warmup minutes, then its incident starts (the onset,
recorded), and the run goes on for --minutes more. Time to page is the first
notification of the incident's own alert minus the onset; every other warning
or critical notification is an extra page.

    python benchmarks/time_to_page.py                          # every incident, ~32 min
    python benchmarks/time_to_page.py --incidents failure-burst,healthy --minutes 12

Prints a table and writes benchmarks/results/time_to_page.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import math
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/time_to_page.py`
    sys.path.insert(0, str(ROOT))

from tests.support.harness import Harness  # noqa: E402
from tests.support.processes import ExporterProcess  # noqa: E402

from benchmarks.report import publish, table  # noqa: E402
from stack.alertmanager import (  # noqa: E402
    AlertmanagerServer,
    Notification,
    WebhookReceiver,
)
from stack.net import LOOPBACK  # noqa: E402
from stack.prometheus import PrometheusServer  # noqa: E402
from stack.workers import CeleryWorker  # noqa: E402

RESULTS = HERE / "results"
RULES = ROOT / "alerts" / "celery-vitals.rules.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager.yml"
APP = "tests.support.alerts_app"
PAGES = ("warning", "critical")  # severities a person receives (info goes nowhere)


# -- the stacks ---------------------------------------------------------------------


@dataclass
class Stack:
    """One incident's broker, exporter, workers and Celery client."""

    incident: Incident
    harness: Harness
    rng: random.Random
    broker_url: str = ""
    exporter: ExporterProcess | None = None
    workers: list[CeleryWorker] = field(default_factory=list)
    client: Any = None
    onset: float | None = None  # wall clock (time.time()) when the incident started

    @property
    def job(self) -> str:
        return f"celery-vitals-{self.incident.name}"

    def start(self) -> Stack:
        """Broker (with RDB snapshots, as production runs it), exporter, worker(s)."""
        name = self.incident.name
        server = self.harness.redis(f"redis-{name}")
        self.broker_url = server.url()
        # no persistence would page CeleryRedisBrokerNotPersistent on every stack
        with contextlib.closing(redis.Redis.from_url(self.broker_url)) as connection:
            connection.config_set("save", "3600 1")
        self.exporter = self.harness.exporter(
            self.broker_url,
            "--queue",
            "celery",
            # the label the alerts carry: each incident's alerts told apart by it
            "--broker-name",
            self.job,
            *self.incident.exporter_args,
            name=f"exporter-{name}",
        )
        self.workers.append(
            self.harness.worker(
                name,
                self.broker_url,
                exporter=self.exporter,
                app=APP,
                concurrency=self.incident.concurrency,
                extra_args=self.incident.worker_args,
            )
        )
        self.client = self.harness.client(self.broker_url)
        return self

    @property
    def target(self) -> str:
        assert self.exporter is not None
        return f"{LOOPBACK}:{self.exporter.port}"

    def send(self, task: str, count: int = 1, **kwargs: object) -> None:
        for _ in range(count):
            self.client.send_task(task, kwargs=kwargs)


def due(rate: float, t: int) -> int:
    """Tasks to send in second ``t`` for ``rate`` per second (fractions carried over)."""
    return math.floor(rate * (t + 1)) - math.floor(rate * t)


# -- the incidents --------------------------------------------------------------------

Load = Callable[[Stack, int], None]  # called once a second; t < 0 before the onset


@dataclass(frozen=True)
class Incident:
    """What a stack runs, what breaks at the onset, and which alert must page for it."""

    name: str
    what: str
    intended: tuple[str, ...]  # its own alert(s); empty: must page nothing
    target_minutes: float | None
    load: Load
    onset: Callable[[Stack], None] = lambda stack: None
    concurrency: int = 2
    worker_args: tuple[str, ...] = ()
    exporter_args: tuple[str, ...] = ()


def background(stack: Stack, t: int) -> None:
    """Healthy traffic of another task on the same queue: half a task a second."""
    stack.send("demo.add", due(0.5, t), x=1, y=2)


def failure_burst(stack: Stack, t: int) -> None:
    stack.send("alerts.charge", due(1.0, t), fail=t >= 0)


def retry_storm(stack: Stack, t: int) -> None:
    background(stack, t)
    if t == 0:
        stack.send("alerts.storm", 3)
    elif t > 0 and t % 60 == 0 and t <= 300:
        stack.send("alerts.storm")  # a new victim a minute, 8 in all: the storm compounds


def bounded_retries(stack: Stack, t: int) -> None:
    background(stack, t)
    if t >= 0 and t % 5 == 0:
        stack.send("alerts.hopeless")


def hung_pool(stack: Stack, t: int) -> None:
    background(stack, t)
    if t == 0:
        stack.send("alerts.hang", stack.incident.concurrency, seconds=3 * 3600)


def cancel_consumer(stack: Stack) -> None:
    hostname = stack.workers[0].hostname
    stack.client.control.cancel_consumer("celery", destination=[hostname], reply=True, timeout=10)


def kill_worker(stack: Stack) -> None:
    stack.workers[0].kill()  # SIGKILL to its process group: main process and pool


def climbing(stack: Stack, t: int) -> None:
    # one process draining 0.5 s tasks takes ~1.9 a second: 1 before, 2.3 after the onset
    stack.send("demo.slow", due(2.3 if t >= 0 else 1.0, t), seconds=0.5)


def healthy(stack: Stack, t: int) -> None:
    """2 charges a second, 1% failing; a retry-with-backoff task every 5 s (2 retries
    each, then success); a burst of 120 short tasks every 2 minutes."""
    for _ in range(due(2.0, t)):
        stack.send("alerts.charge", fail=stack.rng.random() < 0.01)
    if t % 5 == 0:
        stack.send("alerts.backoff", failures=2)
    if t % 120 == 0:
        stack.send("demo.slow", 120, seconds=0.05)


INCIDENTS = {
    incident.name: incident
    for incident in (
        Incident(
            "failure-burst",
            "a task starts failing 100% at the onset (1 a second)",
            ("CeleryTaskFailureRateHigh",),
            10,
            failure_burst,
        ),
        Incident(
            "retry-storm",
            "tasks retrying without bound (every 0.5 s), 3 then 1 a minute",
            ("CeleryTaskRetryStorm",),
            10,
            retry_storm,
        ),
        Incident(
            "bounded-retries",
            "max_retries=2, then dead-lettered, every 5 s: no storm",
            ("CeleryTaskRetriesExhausted",),
            10,
            bounded_retries,
            exporter_args=("--dlq", "dead"),
        ),
        Incident(
            "hung-pool",
            "both pool processes block; the main process heartbeats; backlog",
            ("CeleryQueueNotDraining",),
            10,
            hung_pool,
        ),
        Incident(
            "no-consumers",
            "the worker cancels its consumer of the queue; tasks arrive",
            ("CeleryQueueNoConsumers", "CeleryQueueNotDraining"),
            10,
            background,
            onset=cancel_consumer,
        ),
        Incident(
            "climbing",
            "arrivals 2.3/s against a drain of ~1.9/s (-c 1, 0.5 s tasks)",
            ("CeleryQueueClimbing",),
            30,
            climbing,
            concurrency=1,
        ),
        Incident(
            "worker-killed",
            "SIGKILL to the only worker; tasks keep arriving",
            ("CeleryWorkerDown",),
            10,
            background,
            onset=kill_worker,
        ),
        Incident(
            "healthy",
            "1% failures, retries with backoff, bursts of 120, "
            "--max-tasks-per-child 25: must page nothing",
            (),
            None,
            healthy,
            worker_args=("--max-tasks-per-child", "25"),
        ),
    )
}


# -- one run --------------------------------------------------------------------------


def alertmanager_config(receiver: WebhookReceiver, group_wait: str | None) -> str:
    """deploy/alertmanager.yml with its webhook URLs pointing at ``receiver``."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    for entry in config["receivers"]:
        for webhook in entry.get("webhook_configs", []):
            webhook["url"] = receiver.url(entry["name"])
    if group_wait is not None:
        config["route"]["group_wait"] = group_wait
    return yaml.safe_dump(config, sort_keys=False)


def drive(stack: Stack, warmup: float, minutes: float, stop: threading.Event) -> None:
    """The stack's load, once a second; the onset after ``warmup`` seconds."""
    start = time.monotonic()
    t = -int(warmup)
    while not stop.is_set() and t < minutes * 60:
        if t == 0:
            stack.onset = time.time()
            stack.incident.onset(stack)
        stack.incident.load(stack, t)
        t += 1
        stop.wait(max(start + warmup + t - time.monotonic(), 0))


@contextlib.contextmanager
def stacks_running(incidents: Sequence[Incident], directory: Path) -> Iterator[list[Stack]]:
    """Every incident's stack, started in parallel; stopped (by pid) at the end."""
    with contextlib.ExitStack() as owned:
        stacks = [
            Stack(
                incident,
                owned.enter_context(Harness(directory / incident.name)),
                random.Random(incident.name),
            )
            for incident in incidents
        ]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(Stack.start, stacks))
        yield stacks


def measure(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    incidents = [INCIDENTS[name] for name in args.incidents]
    with contextlib.ExitStack() as owned:
        receiver = owned.enter_context(WebhookReceiver())
        am_config = directory / "alertmanager.yml"
        am_config.write_text(alertmanager_config(receiver, args.group_wait), encoding="utf-8")
        manager = owned.enter_context(AlertmanagerServer(directory / "alertmanager", am_config))
        stacks = owned.enter_context(stacks_running(incidents, directory))
        prometheus = owned.enter_context(
            PrometheusServer(
                directory / "prometheus",
                {stack.job: [stack.target] for stack in stacks},
                [args.rules],
                interval=args.interval,
                alertmanager=manager.address,
            )
        )
        for stack in stacks:
            prometheus.wait_scraped(stack.job, timeout=60)
        began = time.time()
        progress(f"stacks up, Prometheus scraping; onset in {args.warmup:g} min")
        run_load(stacks, args)
        ended = time.time()
        alerts = prometheus.query_range("ALERTS", began, ended, seconds(args.interval))
        notifications = receiver.received()
    return {
        "began": began,
        "ended": ended,
        "incidents": {
            stack.incident.name: summarise(stack, notifications, alerts, seconds(args.interval))
            for stack in stacks
        },
    }


def run_load(stacks: Sequence[Stack], args: argparse.Namespace) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=drive,
            args=(stack, args.warmup * 60, args.minutes, stop),
            name=f"load-{stack.incident.name}",
            daemon=True,
        )
        for stack in stacks
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + (args.warmup + args.minutes) * 60
        while any(thread.is_alive() for thread in threads):
            stop.wait(max(min(60.0, deadline - time.monotonic()), 1.0))
            progress(f"{max(deadline - time.monotonic(), 0) / 60:.1f} min to go")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


# -- what reached the receiver, and when ----------------------------------------------


def episodes(notifications: Sequence[Notification]) -> list[dict[str, Any]]:
    """One entry per alert (name, severity, labels): first firing and resolved time."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for note in sorted(notifications, key=lambda n: n.received_at):
        key = tuple(sorted(f"{k}={v}" for k, v in note.labels.items()))
        entry = found.setdefault(
            key,
            {
                "alertname": note.alertname,
                "severity": note.severity,
                "labels": note.labels,
                "receiver": note.receiver,
                "firing_at": None,
                "resolved_at": None,
            },
        )
        if note.status == "firing" and entry["firing_at"] is None:
            entry["firing_at"] = note.received_at
        elif note.status == "resolved" and entry["firing_at"] is not None:
            entry["resolved_at"] = entry["resolved_at"] or note.received_at
    return sorted(found.values(), key=lambda e: e["firing_at"] or 0)


def transitions(
    alerts: Sequence[tuple[dict[str, str], list[tuple[float, float]]]], job: str, step: float
) -> list[dict[str, Any]]:
    """Prometheus' ALERTS of ``job`` (its exporter's --broker-name, the label the alerts
    carry): each pending or firing stretch (gaps over 2 steps split)."""
    result = []
    for labels, points in alerts:
        if labels.get("broker") != job:
            continue
        stretch = [points[0][0], points[0][0]]
        for t, _ in [*points[1:], (float("inf"), 0.0)]:
            if t - stretch[1] > 2 * step:
                result.append(
                    {
                        "alertname": labels["alertname"],
                        "state": labels["alertstate"],
                        "severity": labels.get("severity", ""),
                        "from": stretch[0],
                        "to": stretch[1],
                    }
                )
                stretch = [t, t]
            else:
                stretch[1] = t
    return sorted(result, key=lambda r: r["from"])


def summarise(
    stack: Stack,
    notifications: Sequence[Notification],
    alerts: Sequence[tuple[dict[str, str], list[tuple[float, float]]]],
    step: float,
) -> dict[str, Any]:
    incident, onset = stack.incident, stack.onset
    mine = episodes([n for n in notifications if n.labels.get("broker") == stack.job])
    after = [
        e
        for e in mine
        if e["firing_at"] is not None and onset is not None and e["firing_at"] >= onset
    ]
    own = [e for e in after if e["alertname"] in incident.intended]
    extra = [
        e for e in mine if e["severity"] in PAGES and e["firing_at"] is not None and e not in own
    ]
    ttp = (own[0]["firing_at"] - onset) / 60 if own and onset is not None else None
    met = (
        (not own and not extra)
        if incident.target_minutes is None
        else (ttp is not None and ttp <= incident.target_minutes)
    )
    fired = [
        t
        for t in transitions(alerts, stack.job, step)
        if t["alertname"] in incident.intended
        and t["state"] == "firing"
        and onset is not None
        and t["to"] >= onset
    ]
    return {
        "job": stack.job,
        "what": incident.what,
        "intended": list(incident.intended),
        "target_minutes": incident.target_minutes,
        "onset": onset,
        "time_to_page_minutes": None if ttp is None else round(ttp, 2),
        "paged_as": own[0]["severity"] if own else None,
        "prometheus_firing_minutes": round((fired[0]["from"] - onset) / 60, 2)
        if fired and onset is not None
        else None,
        "met_target": met,
        "extra_pages": extra,
        "notifications": mine,
        "resolved_by_itself": any(e["resolved_at"] is not None for e in own),
        "alerts_transitions": transitions(alerts, stack.job, step),
    }


# -- report ---------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    print(
        f"Time to page on real workers: one Prometheus ({result['interval']} scrape and "
        f"evaluation, rules {result['rules']}), one Alertmanager "
        f"(deploy/alertmanager.yml), onset after {result['warmup_minutes']:g} min, "
        f"observed {result['minutes']:g} min after it"
    )
    rows = [
        ["incident", "intended alert", "time to page", "as", "target", "in time", "extra pages"]
    ]
    for name, data in result["incidents"].items():
        ttp = data["time_to_page_minutes"]
        target = data["target_minutes"]
        rows.append(
            [
                name,
                " or ".join(data["intended"]) or "(none)",
                "-" if ttp is None else f"{ttp:.1f} min",
                data["paged_as"] or "-",
                "none" if target is None else f"{target:g} min",
                "yes" if data["met_target"] else "NO",
                ", ".join(f"{e['alertname']}/{e['severity']}" for e in data["extra_pages"])
                or "none",
            ]
        )
    print(table(rows))
    for name, data in result["incidents"].items():
        if data["resolved_by_itself"]:
            print(f"{name}: its alert resolved before the end although nothing recovered")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/time_to_page.py", description="Measured time to page per incident."
    )
    parser.add_argument(
        "--incidents",
        type=lambda text: text.split(","),
        default=list(INCIDENTS),
        help=f"comma-separated, from: {','.join(INCIDENTS)}",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=4.0,
        help="minutes every stack runs healthy before its onset",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=26.0,
        help="minutes observed after the onset (a climbing queue takes longest)",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=RULES,
        help="rule file Prometheus loads (default: the shipped one)",
    )
    parser.add_argument(
        "--interval", default="15s", help="scrape and evaluation interval (deploy/prometheus: 15s)"
    )
    parser.add_argument(
        "--group-wait",
        default=None,
        help="override Alertmanager's group_wait (smoke test only; the "
        "measured run keeps deploy/alertmanager.yml's)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where logs and data go (default: a new temporary directory)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "time_to_page.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    unknown = set(args.incidents) - set(INCIDENTS)
    if unknown:
        parser.error(
            f"unknown incidents {', '.join(sorted(unknown))}; "
            f"--incidents takes {', '.join(INCIDENTS)}"
        )
    if args.warmup < 0 or args.minutes <= 0:
        parser.error("--warmup must be at least 0 and --minutes above 0")
    if not args.interval[:-1].replace(".", "", 1).isdigit() or args.interval[-1] not in "smh":
        parser.error("--interval takes a duration such as 15s")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    directory = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / (
        f"time-to-page-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    )
    directory.mkdir(parents=True, exist_ok=True)
    rules = args.rules.resolve()
    result: dict[str, Any] = {
        "benchmark": "time_to_page",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rules": str(rules.relative_to(ROOT)) if rules.is_relative_to(ROOT) else str(rules),
        "rules_sha256": hashlib.sha256(rules.read_bytes()).hexdigest(),
        "interval": args.interval,
        "group_wait": args.group_wait or "deploy/alertmanager.yml",
        "warmup_minutes": args.warmup,
        "minutes": args.minutes,
        "workdir": str(directory),
    }
    args.rules = rules
    result.update(measure(args, directory))
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
