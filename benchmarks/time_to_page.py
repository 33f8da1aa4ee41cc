"""Time to page: real incidents on real workers, through the shipped rules and Alertmanager,
in both setups.

Why: docs/runbooks.md computes each alert's time to page with promtool; issues 13
and 23 ask for it measured, with real workers, real faults, one real Prometheus
running the shipped rule file and one real Alertmanager routing and
inhibiting as deploy/alertmanager.yml does, and for the pages that come on top
(the target is none), in the event setup and in the agent setup (docs/setups.md).

One run starts, side by side, one isolated stack per incident and setup: its own
redis-server, its own Celery worker(s) of tests/support/alerts_app.py, its own
`celery-vitals serve` and its own load, scraped as one job named by its exporter's
--broker-name (the label the alerts carry): `celery-vitals-<incident>` in the event
setup (workers with -E), `celery-vitals-agent-<incident>` in the agent setup (workers
with the agent, DEMO_AGENT=1, no -E; the exporter with --no-event-stream; the job
scrapes the exporter and every worker's agent, CELERY_VITALS_BROKER_NAME naming the
broker alike on both sides). One Prometheus scrapes them all and evaluates the
rules every 15 s, as deploy/prometheus does; one Alertmanager runs a copy of
deploy/alertmanager.yml whose two webhook URLs point at a receiver in this
process, which records every notification. Every stack runs healthy for --warmup
minutes, then its incident starts (the onset, recorded), and the run goes on for
--minutes more. Time to page is the first notification of the incident's own
alert minus the onset (or minus the start of that alert's own fault, when an
incident has two); every other warning or critical notification is an extra page.

    python benchmarks/time_to_page.py                          # both setups, ~32 min
    python benchmarks/time_to_page.py --setups agent
    python benchmarks/time_to_page.py --incidents failure-burst,healthy --minutes 12
    python benchmarks/time_to_page.py --setups event,agent \
        --incidents agent:memory-leak,event:bounded-storm      # setup:incident, one setup

Prints a table per setup and writes benchmarks/results/time_to_page.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import signal
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

from tests.support.agent_workers import AgentWorkers  # noqa: E402
from tests.support.harness import Harness  # noqa: E402
from tests.support.processes import ExporterProcess  # noqa: E402

from benchmarks.report import publish, table  # noqa: E402
from celery_vitals.brokers import BROKER_NAME_ENV  # noqa: E402
from celery_vitals.rules.config import THRESHOLDS  # noqa: E402
from stack.alertmanager import (  # noqa: E402
    AlertmanagerServer,
    Notification,
    WebhookReceiver,
)
from stack.net import LOOPBACK, wait_until  # noqa: E402
from stack.prometheus import PrometheusServer  # noqa: E402
from stack.workers import CeleryWorker  # noqa: E402

RESULTS = HERE / "results"
RULES = ROOT / "alerts" / "celery-vitals.rules.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager.yml"
APP = "tests.support.alerts_app"
PAGES = ("warning", "critical")  # severities a person receives (info goes nowhere)
SETUPS = ("event", "agent")
MEMORY_BOUND = float(THRESHOLDS["worker_process_memory_bytes"].value)  # the default
MEMORY = "celery_worker_process_resident_memory_bytes"


# -- the stacks ---------------------------------------------------------------------


@dataclass
class Stack:
    """One incident's broker, exporter, workers and Celery client, in one setup."""

    incident: Incident
    setup: str
    harness: Harness
    agents: AgentWorkers
    rng: random.Random
    run_seconds: float = 0.0  # from the onset to the end of the run
    broker_url: str = ""
    exporter: ExporterProcess | None = None
    workers: list[CeleryWorker] = field(default_factory=list)
    client: Any = None
    onset: float | None = None  # wall clock (time.time()) when the incident started

    @property
    def job(self) -> str:
        infix = "" if self.setup == "event" else f"{self.setup}-"
        return f"celery-vitals-{infix}{self.incident.name}"

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
            *(("--no-event-stream",) if self.setup == "agent" else ()),
            *self.incident.exporter_args,
            name=f"exporter-{name}",
        )
        arguments = [self.incident.worker_args]
        if self.incident.second_worker is not None:
            arguments.append(self.incident.second_worker)
        for index, extra_args in enumerate(arguments):
            worker_name = name if index == 0 else f"{name}-{index + 1}"
            if self.setup == "event":
                worker = self.harness.worker(
                    worker_name,
                    self.broker_url,
                    exporter=self.exporter,
                    app=APP,
                    concurrency=self.incident.concurrency,
                    extra_args=extra_args,
                )
            else:  # the agent inside the worker, no -E; the same name for the broker
                worker = self.agents.start(
                    worker_name,
                    self.broker_url,
                    app=APP,
                    concurrency=self.incident.concurrency,
                    extra_args=extra_args,
                    extra_env={"DEMO_AGENT": "1", BROKER_NAME_ENV: self.job},
                )
                self.harness.wait_answering(worker, self.broker_url)
            self.workers.append(worker)
        self.client = self.harness.client(self.broker_url)
        return self

    @property
    def targets(self) -> list[str]:
        """The job's targets: the exporter, and in the agent setup every worker's agent."""
        assert self.exporter is not None
        agents = [w.port for w in self.workers if self.setup == "agent"]  # type: ignore[attr-defined]
        return [f"{LOOPBACK}:{port}" for port in (self.exporter.port, *agents)]

    def send(self, task: str, count: int = 1, **kwargs: object) -> None:
        for _ in range(count):
            self.client.send_task(task, kwargs=kwargs)

    def queue_length(self, queue: str = "celery") -> int:
        with contextlib.closing(redis.Redis.from_url(self.broker_url)) as connection:
            return int(connection.llen(queue))


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
    setups: tuple[str, ...] = SETUPS  # where it runs: the agent-only faults in "agent"
    each: bool = False  # every intended alert must page (else any one of them)
    # (alert, seconds after the onset when that alert's own fault starts): its time to
    # page counts from there, and a notification of it before then is an extra page
    starts: tuple[tuple[str, float], ...] = ()
    second_worker: tuple[str, ...] | None = None  # a second worker, with these arguments
    memory_bound: bool = False  # record when the growing process reaches the bound


def background(stack: Stack, t: int) -> None:
    """Healthy traffic of another task on the same queue: half a task a second."""
    stack.send("demo.add", due(0.5, t), x=1, y=2)


def nothing(stack: Stack, t: int) -> None:
    """No load but what the onset sends."""


def failure_burst(stack: Stack, t: int) -> None:
    stack.send("alerts.charge", due(1.0, t), fail=t >= 0)


def retry_storm(stack: Stack, t: int) -> None:
    background(stack, t)
    if t == 0:
        stack.send("alerts.storm", 3)
    elif t > 0 and t % 60 == 0 and t <= 300:
        stack.send("alerts.storm")  # a new victim a minute, 8 in all: the storm compounds


def bounded_storm(stack: Stack, t: int) -> None:
    """A new task every 10 s, each retried 50 times a second apart: ~5 runs a second."""
    background(stack, t)
    if t >= 0 and t % 10 == 0:
        stack.send("alerts.storm_bounded")


def bounded_retries(stack: Stack, t: int) -> None:
    background(stack, t)
    if t >= 0 and t % 5 == 0:
        stack.send("alerts.hopeless")


SECOND_DEAD_LETTER_AT = 180  # s after the onset: the second task starts dead-lettering


def two_dead_letter_sources(stack: Stack, t: int) -> None:
    """alerts.hopeless exhausts its retries (dead-lettered) every 5 s from the onset;
    from 3 minutes on, alerts.refuse fails without retrying (dead-lettered) every 20 s."""
    bounded_retries(stack, t)
    if t >= SECOND_DEAD_LETTER_AT and t % 20 == 0:
        stack.send("alerts.refuse")


def hung_pool(stack: Stack, t: int) -> None:
    background(stack, t)
    if t == 0:
        stack.send("alerts.hang", stack.incident.concurrency, seconds=3 * 3600)


def cancel_consumer(stack: Stack) -> None:
    hostname = stack.workers[0].hostname
    stack.client.control.cancel_consumer("celery", destination=[hostname], reply=True, timeout=10)


def kill_worker(stack: Stack) -> None:
    stack.workers[0].kill()  # SIGKILL to its process group: main process and pool


def pool_processes(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a prefork worker's pool processes), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def kill_pool_process(stack: Stack) -> None:
    """SIGKILL from outside to one pool process, as the kernel's OOM killer sends it."""
    children = pool_processes(stack.workers[0].pid)
    assert children, f"{stack.workers[0].hostname} has no pool process to kill"
    os.kill(children[0], signal.SIGKILL)


LEAK_MIB_PER_MINUTE = 100.0


def memory_leak(stack: Stack, t: int) -> None:
    """At the onset one long task starts keeping 100 MiB more a minute in its pool
    process, to the end of the run; the other process runs the background load."""
    background(stack, t)
    if t == 0:
        stack.send("alerts.leak", mib_per_minute=LEAK_MIB_PER_MINUTE, seconds=stack.run_seconds)


def saturated_pool(stack: Stack, t: int) -> None:
    """Before: the background. At the onset 200 tasks of 4 s arrive at once, then 0.4 a
    second: two processes finish 0.5 a second, busy all the time, with a backlog of
    100-200 that shrinks slowly (no climbing queue, no slow drain)."""
    if t < 0:
        background(stack, t)
    elif t == 0:
        stack.send("alerts.slow", 200, seconds=4)
    else:
        stack.send("alerts.slow", due(0.4, t), seconds=4)


HOARDED = 30  # 2-minute tasks: 2 running and 28 prefetched (16 x 2 allowed), ~30 min of work


def hoard(stack: Stack) -> None:
    """The second worker stops consuming for a moment; the first (prefetch multiplier 16)
    takes all 30 two-minute tasks; the second consumes again and has nothing to do."""
    idle = stack.workers[1].hostname
    stack.client.control.cancel_consumer("celery", destination=[idle], reply=True, timeout=10)
    # a BRPOP it issued before the cancel may still be pending (kombu's last for 1 s): a
    # message it took would be requeued as undeliverable and count as a redelivery
    time.sleep(3)
    stack.send("alerts.slow", HOARDED, seconds=120)
    wait_until(
        lambda: stack.queue_length() == 0,
        timeout=60,
        what=f"{stack.workers[0].hostname} to prefetch every task",
    )
    stack.client.control.add_consumer("celery", destination=[idle], reply=True, timeout=10)


def time_limit(stack: Stack, t: int) -> None:
    """demo.slow (hard time limit 1 s) asked to run 3 s, every 10 s: the pool ends the
    process running it (TimeLimitExceeded), the background load goes on."""
    background(stack, t)
    if t >= 0 and t % 10 == 0:
        stack.send("demo.slow", seconds=3)


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
            "bounded-storm",
            "a new task every 10 s, autoretry max_retries=50 a second apart, then failed",
            ("CeleryTaskRetryStorm",),
            10,
            bounded_storm,
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
            "dlq-second-task",
            "as bounded-retries; from +3 min a second task dead-letters without retrying "
            "(1 in 20 s)",
            ("CeleryTaskRetriesExhausted", "CeleryDeadLetterQueueGrowing"),
            10,
            two_dead_letter_sources,
            exporter_args=("--dlq", "dead"),
            each=True,
            starts=(("CeleryDeadLetterQueueGrowing", SECOND_DEAD_LETTER_AT),),
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
            # the agent setup sees the only consumer's pool saturated: that alert pages
            # the lack of capacity instead (the climb yields to it)
            ("CeleryQueueClimbing", "CeleryWorkerPoolSaturated"),
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
        Incident(
            "pool-process-killed",
            "SIGKILL from outside to one pool process (as the OOM killer)",
            ("CeleryWorkerPoolProcessKilled",),
            10,
            background,
            onset=kill_pool_process,
            setups=("agent",),
        ),
        Incident(
            "memory-leak",
            "one pool process keeps 100 MiB more a minute (a long task)",
            ("CeleryWorkerMemoryGrowing",),
            10,
            memory_leak,
            setups=("agent",),
            memory_bound=True,
        ),
        Incident(
            "pool-saturated",
            "200 tasks of 4 s at once, then 0.4/s: -c 2 busy, backlog 100-200",
            ("CeleryWorkerPoolSaturated",),
            10,
            saturated_pool,
            setups=("agent",),
        ),
        Incident(
            "prefetch-hoarding",
            "--prefetch-multiplier=16 takes 30 two-minute tasks; a second worker idles",
            ("CeleryWorkerPrefetchHoarding",),
            10,
            nothing,
            onset=hoard,
            worker_args=("--prefetch-multiplier", "16"),
            second_worker=(),
            setups=("agent",),
        ),
        Incident(
            "time-limit",
            "a task past its hard time limit (1 s) every 10 s: the pool ends its process",
            ("CeleryTaskTimeLimitExceeded",),
            10,
            time_limit,
            setups=("agent",),
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
def stacks_running(
    selected: Sequence[tuple[str, Incident]], directory: Path
) -> Iterator[list[Stack]]:
    """Every (setup, incident)'s stack, started in parallel; stopped (by pid) at the end."""
    with contextlib.ExitStack() as owned:
        stacks = []
        for setup, incident in selected:
            harness = owned.enter_context(Harness(directory / setup / incident.name))
            agents = AgentWorkers(harness.directory)
            owned.callback(agents.close)  # before the harness stops their broker
            stacks.append(
                Stack(incident, setup, harness, agents, random.Random(f"{setup}/{incident.name}"))
            )
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(Stack.start, stacks))
        yield stacks


def measure(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as owned:
        receiver = owned.enter_context(WebhookReceiver())
        am_config = directory / "alertmanager.yml"
        am_config.write_text(alertmanager_config(receiver, args.group_wait), encoding="utf-8")
        manager = owned.enter_context(AlertmanagerServer(directory / "alertmanager", am_config))
        stacks = owned.enter_context(stacks_running(args.selected, directory))
        prometheus = owned.enter_context(
            PrometheusServer(
                directory / "prometheus",
                {stack.job: stack.targets for stack in stacks},
                [args.rules],
                interval=args.interval,
                alertmanager=manager.address,
            )
        )
        for stack in stacks:
            prometheus.wait_scraped(stack.job, timeout=60)
            stack.run_seconds = args.minutes * 60
        began = time.time()
        progress(f"{len(stacks)} stacks up, Prometheus scraping; onset in {args.warmup:g} min")
        run_load(stacks, args)
        ended = time.time()
        step = seconds(args.interval)
        alerts = prometheus.query_range("ALERTS", began, ended, step)
        notifications = receiver.received()
        bound = memory_bound(args.rules)
        growth = {
            stack.job: prometheus.query_range(
                f'max({MEMORY}{{broker="{stack.job}"}})', began, ended, step
            )
            for stack in stacks
            if stack.incident.memory_bound
        }
    return {
        "began": began,
        "ended": ended,
        "memory_bound_bytes": bound,
        "setups": {
            setup: {
                stack.incident.name: summarise(
                    stack, notifications, alerts, step, memory=growth.get(stack.job), bound=bound
                )
                for stack in stacks
                if stack.setup == setup
            }
            for setup in args.setups
        },
    }


def memory_bound(rules: Path) -> float:
    """The bound CeleryWorkerMemoryGrowing pages before, as written in ``rules``."""
    found = re.search(rf"\((\d+(?:\.\d+)?(?:e\+?\d+)?) - {MEMORY}", rules.read_text())
    return float(found.group(1)) if found else MEMORY_BOUND


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
    *,
    memory: Sequence[tuple[dict[str, str], list[tuple[float, float]]]] | None,
    bound: float,
) -> dict[str, Any]:
    incident, onset = stack.incident, stack.onset
    starts = dict(incident.starts)

    def start_of(alert: str) -> float | None:
        return None if onset is None else onset + starts.get(alert, 0.0)

    mine = episodes([n for n in notifications if n.labels.get("broker") == stack.job])
    own = [
        e
        for e in mine
        if e["alertname"] in incident.intended
        and e["firing_at"] is not None
        and (begun := start_of(e["alertname"])) is not None
        and e["firing_at"] >= begun
    ]
    extra = [
        e for e in mine if e["severity"] in PAGES and e["firing_at"] is not None and e not in own
    ]
    # each intended alert's first page, in minutes after its own fault started
    pages: dict[str, float | None] = {}
    for alert in incident.intended:
        firsts = [e["firing_at"] for e in own if e["alertname"] == alert]
        begun = start_of(alert)
        pages[alert] = (
            round((min(firsts) - begun) / 60, 2) if firsts and begun is not None else None
        )
    paged = [minutes for minutes in pages.values() if minutes is not None]
    if incident.each:
        ttp = max(paged) if paged and len(paged) == len(pages) else None
    else:
        ttp = min(paged) if paged else None
    met = (
        (not own and not extra)
        if incident.target_minutes is None
        else (ttp is not None and ttp <= incident.target_minutes)
    )
    everything = transitions(alerts, stack.job, step)
    fired = [
        t
        for t in everything
        if t["alertname"] in incident.intended
        and t["state"] == "firing"
        and onset is not None
        and t["to"] >= onset
    ]
    first_own = min(own, key=lambda e: e["firing_at"]) if own else None
    summary: dict[str, Any] = {
        "job": stack.job,
        "setup": stack.setup,
        "what": incident.what,
        "intended": list(incident.intended),
        "each_must_page": incident.each,
        "starts_after_onset_seconds": starts,
        "target_minutes": incident.target_minutes,
        "onset": onset,
        "time_to_page_minutes": ttp,
        "time_to_page_by_alert": pages,
        "paged_as": first_own["severity"] if first_own else None,
        "prometheus_firing_minutes": round((fired[0]["from"] - onset) / 60, 2)
        if fired and onset is not None
        else None,
        "met_target": met,
        "extra_pages": extra,
        "notifications": mine,
        "resolved_by_itself": any(e["resolved_at"] is not None for e in own),
        "alerts_transitions": everything,
    }
    if memory is not None and onset is not None:
        summary["memory"] = memory_summary(memory, onset, bound, ttp)
    return summary


def memory_summary(
    memory: Sequence[tuple[dict[str, str], list[tuple[float, float]]]],
    onset: float,
    bound: float,
    ttp: float | None,
) -> dict[str, Any]:
    """When the stack's largest worker process reached ``bound`` (or, if it did not within
    the run, when it would at its growth over the last 5 minutes), and how fast it grew."""
    points = [(t, v) for _, series in memory for t, v in series]
    points.sort()
    after = [(t, v) for t, v in points if t >= onset]
    result: dict[str, Any] = {
        "bound_bytes": bound,
        "at_onset_mib": round(after[0][1] / 2**20, 1) if after else None,
        "last_mib": round(points[-1][1] / 2**20, 1) if points else None,
        "growth_mib_per_minute": None,
        "bound_reached_minutes": None,
        "bound_reached_extrapolated": False,
        "paged_minutes_before_bound": None,
    }
    if len(after) < 2:
        return result
    recent = [(t, v) for t, v in after if t >= after[-1][0] - 300] or after
    span = recent[-1][0] - recent[0][0]
    slope = (recent[-1][1] - recent[0][1]) / span if span > 0 else 0.0
    result["growth_mib_per_minute"] = round(slope * 60 / 2**20, 1)
    reached = next((t for t, v in after if v >= bound), None)
    if reached is None and slope > 0:
        reached = recent[-1][0] + (bound - recent[-1][1]) / slope
        result["bound_reached_extrapolated"] = True
    if reached is not None:
        result["bound_reached_minutes"] = round((reached - onset) / 60, 2)
        if ttp is not None:
            result["paged_minutes_before_bound"] = round((reached - onset) / 60 - ttp, 2)
    return result


# -- report ---------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    print(
        f"Time to page on real workers: one Prometheus ({result['interval']} scrape and "
        f"evaluation, rules {result['rules']}), one Alertmanager "
        f"(deploy/alertmanager.yml), onset after {result['warmup_minutes']:g} min, "
        f"observed {result['minutes']:g} min after it"
    )
    for setup, incidents in result["setups"].items():
        print(f"\n{setup} setup")
        rows = [
            ["incident", "intended alert", "time to page", "as", "target", "in time", "extra pages"]
        ]
        for name, data in incidents.items():
            target = data["target_minutes"]
            rows.append(
                [
                    name,
                    (" and " if data["each_must_page"] else " or ").join(data["intended"])
                    or "(none)",
                    pages_text(data),
                    data["paged_as"] or "-",
                    "none" if target is None else f"{target:g} min",
                    "yes" if data["met_target"] else "NO",
                    ", ".join(f"{e['alertname']}/{e['severity']}" for e in data["extra_pages"])
                    or "none",
                ]
            )
        print(table(rows))
        for name, data in incidents.items():
            if data["resolved_by_itself"]:
                print(f"{name}: its alert resolved before the end although nothing recovered")
            memory = data.get("memory")
            if memory:
                print(
                    f"{name}: {memory['at_onset_mib']} MiB at the onset, growing "
                    f"{memory['growth_mib_per_minute']} MiB/min, reached the bound "
                    f"({memory['bound_bytes'] / 2**20:g} MiB) at "
                    f"{memory['bound_reached_minutes']} min"
                    f"{' (extrapolated)' if memory['bound_reached_extrapolated'] else ''}; "
                    f"paged {memory['paged_minutes_before_bound']} min before"
                )


def pages_text(data: dict[str, Any]) -> str:
    """The time to page; with an alert per fault, each alert's after its own fault."""
    by_alert = data["time_to_page_by_alert"]
    if data["each_must_page"]:
        return "; ".join(
            f"{alert.removeprefix('Celery')} {'-' if m is None else f'{m:.1f} min'}"
            for alert, m in by_alert.items()
        )
    ttp = data["time_to_page_minutes"]
    return "-" if ttp is None else f"{ttp:.1f} min"


def selection(text: str, setups: Sequence[str]) -> list[tuple[str, Incident]]:
    """``--incidents``: names (in every chosen setup they run in) or ``setup:name``."""
    chosen: list[tuple[str, Incident]] = []
    entries = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [e for e in entries if e.rpartition(":")[2] not in INCIDENTS]
    if unknown:
        raise ValueError(
            f"unknown incidents {', '.join(unknown)}; the incidents: {', '.join(INCIDENTS)}"
        )
    for entry in entries:
        setup, _, name = entry.rpartition(":")
        if setup and setup not in setups:
            raise ValueError(f"{entry!r} names setup {setup!r}, not among --setups")
        incident = INCIDENTS[name]
        where = [s for s in ([setup] if setup else setups) if s in incident.setups]
        if not where:
            raise ValueError(
                f"incident {name!r} runs only in the {'/'.join(incident.setups)} setup"
            )
        chosen += [(s, incident) for s in where if (s, incident) not in chosen]
    if not chosen:
        raise ValueError("no incident chosen")
    return sorted(
        chosen, key=lambda pair: (setups.index(pair[0]), list(INCIDENTS).index(pair[1].name))
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/time_to_page.py", description="Measured time to page per incident."
    )
    parser.add_argument(
        "--setups",
        default=",".join(SETUPS),
        help="comma-separated, from: event (workers with -E) and agent (workers with the "
        "agent, the exporter with --no-event-stream)",
    )
    parser.add_argument(
        "--incidents",
        default=",".join(INCIDENTS),
        help=f"comma-separated, each in every chosen setup it runs in, or setup:incident for "
        f"one: {','.join(INCIDENTS)} (agent only: "
        f"{','.join(n for n, i in INCIDENTS.items() if i.setups == ('agent',))})",
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
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge into the existing --output: its incidents of other setups and names kept, "
        "this run's batch added (one measurement run in batches)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    setups = [part.strip() for part in args.setups.split(",") if part.strip()]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown or not setups:
        parser.error(f"--setups takes {' and/or '.join(SETUPS)}, got {args.setups!r}")
    args.setups = [setup for setup in SETUPS if setup in setups]
    try:
        args.selected = selection(args.incidents, args.setups)
    except ValueError as error:
        parser.error(f"--incidents: {error}")
    args.setups = [s for s in args.setups if any(setup == s for setup, _ in args.selected)]
    if args.warmup < 0 or args.minutes <= 0:
        parser.error("--warmup must be at least 0 and --minutes above 0")
    if not args.interval[:-1].replace(".", "", 1).isdigit() or args.interval[-1] not in "smh":
        parser.error("--interval takes a duration such as 15s")
    return args


BATCH_KEYS = ("command", "selected", "began", "ended", "workdir", "rules_sha256")


def merged(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``later``'s run merged into ``earlier``'s: every batch listed, each incident's
    latest result kept, the setups in their usual order."""
    batches = earlier.get("batches") or [{key: earlier.get(key) for key in BATCH_KEYS}]
    result = dict(later)
    result["batches"] = [*batches, {key: later.get(key) for key in BATCH_KEYS}]
    result["setups"] = {
        setup: {
            name: data
            for name in INCIDENTS
            for data in [
                later["setups"].get(setup, {}).get(name)
                or earlier.get("setups", {}).get(setup, {}).get(name)
            ]
            if data is not None
        }
        for setup in SETUPS
        if setup in later["setups"] or setup in earlier.get("setups", {})
    }
    return result


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
        "command": "benchmarks/time_to_page.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "selected": [f"{setup}:{incident.name}" for setup, incident in args.selected],
        "workdir": str(directory),
    }
    args.rules = rules
    result.update(measure(args, directory))
    if args.merge and args.output.exists():
        result = merged(json.loads(args.output.read_text()), result)
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
