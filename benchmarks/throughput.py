"""Event throughput of celery-vitals, in process and through a real broker.

Why: the exporter must keep up with the event stream of a busy Celery
cluster on one core (issue 2), at no less than 70% of the throughput of a
bare kombu receiver that only decodes events (issue 7). This measures both,
on synthetic events that carry the fields Celery 5.7 sends, batched the way
a worker batches them (task events in lists of up to 24; task-sent and
heartbeats one per message), and checks that every event was counted.

    # in process (no broker): router only, decode + router, decode only
    python benchmarks/throughput.py
    # `celery-vitals serve` and benchmarks/bare_receiver.py consume the same
    # events from a real broker at the same time (full speed, or --rate N)
    python benchmarks/throughput.py --broker redis
    python benchmarks/throughput.py --broker amqp
    # where the time goes: cProfile of decode + router in process, or
    # py-spy on the running exporter (pip install py-spy)
    python benchmarks/throughput.py --profile
    python benchmarks/throughput.py --broker redis --spy exporter.spy
    # a few thousand events, in process, well under a second (run by a test)
    python benchmarks/throughput.py --smoke --no-write

Each run prints a table and writes JSON to
benchmarks/results/throughput-<mode>.json. A count that does not match what
was sent raises VerificationError (exit status 1). The RabbitMQ node is
started with the test suite's fixture code (stack/rabbitmq.py).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kombu.utils.json

from celery_vitals.config import Config, build
from celery_vitals.pipeline import Pipeline  # guards, trackers and router, no I/O

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as `python benchmarks/throughput.py`
    sys.path.insert(0, str(HERE.parent))

from stack.net import free_port, wait_until  # noqa: E402
from stack.processes import ManagedProcess  # noqa: E402
from stack.rabbitmq import RabbitMQServer  # noqa: E402
from stack.redis import RedisServer  # noqa: E402

RESULTS = HERE / "results"
PING_TYPE = "bench-ping"  # control message: an unknown type, counted as "other" by the exporter

Body = dict[str, Any] | list[dict[str, Any]]
Key = tuple[str, ...]

# A realistic mix: ~40 task names over 6 queues, each name routed to one queue.
_QUEUES = ("celery", "billing", "emails", "reports", "webhooks", "priority")
_MODULES = ("orders", "billing", "notifications", "reports", "sync", "media", "search", "users")
_VERBS = ("process", "charge", "send", "render", "refresh")
TASK_NAMES: tuple[tuple[str, str], ...] = tuple(
    (
        f"app.{module}.tasks.{verb}_{module[:-1] if module.endswith('s') else module}",
        _QUEUES[(i + j) % len(_QUEUES)],
    )
    for i, module in enumerate(_MODULES)
    for j, verb in enumerate(_VERBS)
)
EXCEPTIONS = (
    ("ValueError('invalid amount: %d')", "ValueError"),
    (
        "ConnectionError('Error 111 connecting to api.internal:443. Connection refused.')",
        "ConnectionError",
    ),
    ("KeyError('customer_%d')", "KeyError"),
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/local/lib/python3.11/site-packages/celery/app/trace.py", line 453, in '
    "trace_task\n    R = retval = fun(*args, **kwargs)\n"
    '  File "/app/app/tasks.py", line 88, in run\n    return self.do(*args)\n'
    "%s\n"
)
SIM_TASKS_PER_SECOND = 2000.0  # simulated cluster rate: spaces timestamps and heartbeats
HEARTBEAT_INTERVAL = 2.0  # Celery's worker heartbeat default


class VerificationError(AssertionError):
    """The exporter did not count what was sent: a benchmark figure would be a lie."""


@dataclass
class Workload:
    """Pre-generated message bodies and what the exporter must count from them."""

    tasks: int
    bodies: list[Body]  # decoded, as the router receives them
    payloads: list[bytes]  # the same bodies, JSON-encoded as on the wire
    routing_keys: list[str]  # Celery's: task.sent, task.multi, worker.heartbeat
    hostnames: list[str]  # the publishing node, for the message header
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    counters: dict[str, Counter[Key]] = field(default_factory=dict)
    worker_task_events: Counter[str] = field(default_factory=Counter)

    @property
    def payload_bytes(self) -> int:
        return sum(len(p) for p in self.payloads)

    def events_in(self, index: int) -> int:
        body = self.bodies[index]
        return len(body) if isinstance(body, list) else 1


# -- synthetic events ------------------------------------------------------------


class _Node:
    """One event source (a worker or a client process), as Celery's dispatcher stamps it."""

    def __init__(self, hostname: str, pid: int) -> None:
        self.hostname = hostname
        self.pid = pid
        self.clock = 0

    def event(self, type_: str, timestamp: float, **fields: Any) -> dict[str, Any]:
        # celery.events.event.Event(type, hostname=, utcoffset=, pid=, clock=, **fields)
        self.clock += 1
        event = {
            "hostname": self.hostname,
            "utcoffset": 0,
            "pid": self.pid,
            "clock": self.clock,
            **fields,
        }
        event["timestamp"] = timestamp
        event["type"] = type_
        return event


def _uuid(rng: random.Random) -> str:
    return str(uuid_module.UUID(int=rng.getrandbits(128), version=4))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def generate(
    tasks: int,
    *,
    seed: int = 7,
    batch: int = 24,
    workers: int = 8,
    fail_ratio: float = 0.02,
    retry_ratio: float = 0.02,
) -> Workload:
    """Bodies for ``tasks`` tasks, in the order a broker would deliver them.

    Each task: task-sent (from a client, one per message), then on one worker
    task-received, task-started and task-succeeded or task-failed; a retried
    task also has task-retried, a task-sent from the worker (retries + 1, an
    eta) and a second received/started. Worker task events go through a
    per-worker buffer flushed at ``batch`` events, like Celery's event
    dispatcher under load; heartbeats every 2 s of simulated time.
    """
    rng = random.Random(seed)
    start = time.time() - tasks / SIM_TASKS_PER_SECOND - 60
    nodes = [_Node(f"celery@worker-{i}.app-7f9c8d{i}", 1000 + i) for i in range(workers)]
    clients = [_Node(f"gen{4000 + i}@web-{i}", 4000 + i) for i in range(4)]
    counters: dict[str, Counter[Key]] = {
        kind: Counter()
        for kind in ("sent", "received", "started", "succeeded", "failed", "retried")
    }
    # (time, order, source, event); source -1: sent on its own (clients, worker's task-sent)
    timeline: list[tuple[float, int, int, dict[str, Any]]] = []
    order = 0

    def at(ts: float, source: int, event: dict[str, Any]) -> None:
        nonlocal order
        timeline.append((ts, order, source, event))
        order += 1

    for i in range(tasks):
        name, queue = TASK_NAMES[rng.randrange(len(TASK_NAMES))]
        key = (name, queue)
        w = rng.randrange(workers)
        node = nodes[w]
        task_id = _uuid(rng)
        args = f"({rng.randrange(10**6)}, '{_uuid(rng)[:8]}')"
        kwargs = f"{{'tenant': 'acme-{rng.randrange(50)}', 'priority': {rng.randrange(10)}}}"
        sent_at = start + i / SIM_TASKS_PER_SECOND + rng.random() * 0.0005
        client = clients[rng.randrange(len(clients))]
        eta: str | None = None
        at(
            sent_at,
            -1,
            client.event(
                "task-sent",
                sent_at,
                uuid=task_id,
                root_id=task_id,
                parent_id=None,
                name=name,
                args=args,
                kwargs=kwargs,
                retries=0,
                eta=None,
                expires=None,
                queue=queue,
                exchange="",
                routing_key=queue,
            ),
        )
        counters["sent"][key] += 1
        attempts = 2 if rng.random() < retry_ratio else 1
        ts = sent_at
        for attempt in range(attempts):
            ts += 0.002 + rng.random() * 0.02
            at(
                ts,
                w,
                node.event(
                    "task-received",
                    ts,
                    uuid=task_id,
                    name=name,
                    args=args,
                    kwargs=kwargs,
                    root_id=task_id,
                    parent_id=None,
                    retries=attempt,
                    eta=eta,
                    expires=None,
                ),
            )
            if eta is not None:
                ts = max(ts, datetime.fromisoformat(eta).timestamp())
            ts += rng.random() * 0.01
            at(ts, w, node.event("task-started", ts, uuid=task_id))
            runtime = rng.expovariate(1 / 0.08)
            if attempt < attempts - 1:
                # a retried call waited on something slow; this also keeps the retry's
                # task-sent behind the flush of this attempt's buffered task-started
                runtime += 0.2
            ts += runtime
            counters["received"][key] += 1
            counters["started"][key] += 1
            exc_text, exc_class = EXCEPTIONS[rng.randrange(len(EXCEPTIONS))]
            exc_text = exc_text.replace("%d", str(rng.randrange(10**4)))
            traceback = TRACEBACK % exc_text
            if attempt < attempts - 1:
                at(
                    ts,
                    w,
                    node.event(
                        "task-retried", ts, uuid=task_id, exception=exc_text, traceback=traceback
                    ),
                )
                counters["retried"][key] += 1
                eta = _iso(ts + 1.0)
                at(
                    ts,
                    -1,
                    node.event(
                        "task-sent",
                        ts,
                        uuid=task_id,
                        root_id=task_id,
                        parent_id=None,
                        name=name,
                        args=args,
                        kwargs=kwargs,
                        retries=attempt + 1,
                        eta=eta,
                        expires=None,
                        queue=queue,
                        exchange="",
                        routing_key=queue,
                    ),
                )
                counters["sent"][key] += 1
            elif rng.random() < fail_ratio:
                at(
                    ts,
                    w,
                    node.event(
                        "task-failed", ts, uuid=task_id, exception=exc_text, traceback=traceback
                    ),
                )
                counters["failed"][(*key, exc_class)] += 1
            else:
                at(
                    ts,
                    w,
                    node.event(
                        "task-succeeded",
                        ts,
                        uuid=task_id,
                        result=f"{{'ok': True, 'id': {rng.randrange(10**6)}}}",
                        runtime=runtime,
                    ),
                )
                counters["succeeded"][key] += 1
    # worker-online, then heartbeats: sent on their own, filled in by _batch with the
    # worker's processed count at that point
    end = timeline[-1][0] if timeline else start
    for w in range(workers):
        at(start - 5 + w * 0.01, -2 - w, {"type": "worker-online"})
    beat = start + rng.random()
    while beat < end + HEARTBEAT_INTERVAL:
        for w in range(workers):
            at(beat + w * 0.01, -2 - w, {"type": "worker-heartbeat"})
        beat += HEARTBEAT_INTERVAL
    timeline.sort(key=lambda item: (item[0], item[1]))
    return _batch(tasks, timeline, nodes, counters, rng, batch=batch)


def _batch(
    tasks: int,
    timeline: list[tuple[float, int, int, dict[str, Any]]],
    nodes: list[_Node],
    counters: dict[str, Counter[Key]],
    rng: random.Random,
    *,
    batch: int,
    max_delay: float = 0.05,
) -> Workload:
    """Turn the timeline into message bodies, in delivery order.

    A worker's buffer is flushed when it holds ``batch`` events, or when its
    oldest event is ``max_delay`` old (Celery flushes on its next loop turn).
    """
    load = Workload(
        tasks=tasks, bodies=[], payloads=[], routing_keys=[], hostnames=[], counters=counters
    )
    buffers: list[list[dict[str, Any]]] = [[] for _ in nodes]
    oldest = [float("inf")] * len(nodes)
    processed = [0] * len(nodes)
    dumps = json.dumps

    def emit(body: Body, routing_key: str, hostname: str) -> None:
        load.bodies.append(body)
        load.payloads.append(dumps(body).encode())
        load.routing_keys.append(routing_key)
        load.hostnames.append(hostname)

    def flush(w: int) -> None:
        if buffers[w]:
            emit(buffers[w], "task.multi", nodes[w].hostname)
            buffers[w] = []
            oldest[w] = float("inf")

    for ts, _, source, item in timeline:
        for w, first in enumerate(oldest):
            if ts - first > max_delay:
                flush(w)
        event = item
        if source <= -2:  # worker-online or -heartbeat, sent on its own
            w = -2 - source
            node = nodes[w]
            event = node.event(
                item["type"],
                ts,
                freq=HEARTBEAT_INTERVAL,
                active=rng.randrange(9),
                processed=processed[w],
                loadavg=[round(rng.uniform(0.2, 3), 2), 1.1, 0.9],
                sw_ident="py-celery",
                sw_ver="5.7.0",
                sw_sys="Linux",
            )
            emit(event, event["type"].replace("-", "."), node.hostname)
        elif source == -1:
            emit(event, "task.sent", event["hostname"])
        else:
            if event["type"] in ("task-succeeded", "task-failed"):
                processed[source] += 1
            if not buffers[source]:
                oldest[source] = ts
            buffers[source].append(event)
            load.worker_task_events[event["hostname"]] += 1
            if len(buffers[source]) >= batch:
                flush(source)
        load.by_type[event["type"]] += 1
        load.events += 1
    for w in range(len(nodes)):
        flush(w)
    return load


# -- the exporter's trackers, without HTTP or a broker ---------------------------


def default_config() -> Config:
    """The configuration `celery-vitals serve` runs with when given no options."""
    return build({"broker_url": "redis://localhost:6379/0"})


def verify(pipeline: Pipeline, load: Workload) -> None:
    """Every generated event counted, every metric updated, nothing skipped or lost."""
    problems: list[str] = []
    router, tasks = pipeline.router, pipeline.tasks

    def same(what: str, got: object, want: object) -> None:
        if got == want:
            return
        if isinstance(got, dict) and isinstance(want, dict):
            keys = sorted({*got, *want} - {k for k in got if got.get(k) == want.get(k)}, key=str)
            shown = ", ".join(f"{k!r}: {got.get(k)} counted, {want.get(k)} sent" for k in keys[:3])
            more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{what}: {shown}{more}")
        else:
            problems.append(f"{what}: counted {got!r}, sent {want!r}")

    by_type = {k: v for k, v in router.events_by_type.items() if v}
    same("events by type", by_type, dict(load.by_type))
    same("events total", sum(router.events_by_type.values()), load.events)
    for kind, want in load.counters.items():
        got: dict[Key, int] = getattr(tasks, kind)
        same(f"celery_task_{kind}_total", dict(got), dict(want))
    for kind in ("rejected", "revoked", "expired", "redelivered"):
        same(f"celery_task_{kind}_total", sum(getattr(tasks, kind).values()), 0)
    started = sum(load.counters["started"].values())
    succeeded = sum(load.counters["succeeded"].values())
    for what, histograms, observations in (
        ("runtime", tasks.runtime, succeeded),
        ("queue_wait", tasks.queue_wait, started),
        ("prefetch_wait", tasks.prefetch_wait, started),
    ):
        count = sum(sum(series[:-1]) for series in histograms.series.values())
        same(f"celery_task_{what}_seconds_count", count, observations)
    same("last success series", set(tasks.last_success), set(load.counters["succeeded"]))
    same("skipped events (router)", router.skipped, {})
    same("skipped events (tasks)", tasks.skipped, {})
    same("skipped observations", tasks.observations_skipped, {})
    same("unknown uuid events", tasks.unknown_uuid, {})
    same("evictions", tasks.evictions, {"capacity": 0, "age": 0})
    same("tasks still tracked", len(tasks.tasks), 0)
    same("reserved", {h: n for h, n in tasks.reserved_by_host.items() if n}, {})
    got_events = {h: w.task_events for h, w in pipeline.workers.workers.items()}
    same("task events per worker", got_events, dict(load.worker_task_events))
    folded = {g.label: dict(g.folded) for g in pipeline.guards.values() if g.folded}
    same("label values folded into other", folded, {})
    if problems:
        raise VerificationError("events not counted as sent:\n  " + "\n  ".join(problems))


# -- in-process timing ------------------------------------------------------------


Decoder = Callable[[bytes], Any]
DECODERS: dict[str, Decoder] = {
    # what EventStream does: message.decode() -> kombu's json (an object_hook per dict)
    "kombu": kombu.utils.json.loads,
    "json": json.loads,
}


@dataclass
class Timing:
    name: str
    events: int
    wall: float
    cpu: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall if self.wall else 0.0

    @property
    def us_per_event(self) -> float:
        return self.cpu / self.events * 1e6 if self.events else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "wall_seconds": round(self.wall, 4),
            "cpu_seconds": round(self.cpu, 4),
            "events_per_second": round(self.events_per_second),
            "cpu_us_per_event": round(self.us_per_event, 3),
        }


IN_PROCESS_MODES = ("router", "kombu+router", "kombu", "json+router", "json")


def _runner(mode: str, load: Workload, config: Config) -> Callable[[], Pipeline | None]:
    """One pass of a mode: ``router``, ``<decoder>`` or ``<decoder>+router``.

    Each pass builds fresh trackers, so every pass starts from an empty exporter.
    """
    if mode == "router":

        def route() -> Pipeline:
            pipeline = Pipeline(config)
            handle = pipeline.router.handle
            for body in load.bodies:
                handle(body)
            return pipeline

        return route
    decoder_name, _, with_router = mode.partition("+")
    decode = DECODERS[decoder_name]
    if not with_router:

        def decode_only() -> None:
            for payload in load.payloads:
                decode(payload)

        return decode_only

    def decode_and_route() -> Pipeline:
        pipeline = Pipeline(config)
        handle = pipeline.router.handle
        for payload in load.payloads:
            handle(decode(payload))
        return pipeline

    return decode_and_route


def _best(mode: str, load: Workload, config: Config, repeat: int) -> Timing:
    """Best of ``repeat`` passes (least CPU); every pass that routes is verified."""
    run = _runner(mode, load, config)
    best: Timing | None = None
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        pipeline = run()
        timing = Timing(mode, load.events, time.perf_counter() - wall0, time.process_time() - cpu0)
        if pipeline is not None:
            verify(pipeline, load)
        if best is None or timing.cpu < best.cpu:
            best = timing
    assert best is not None
    return best


def run_in_process(
    load: Workload, config: Config, repeat: int, modes: Sequence[str] = IN_PROCESS_MODES
) -> dict[str, Any]:
    """(a) router on decoded bodies, (b) decode + router, (c) decode only; per decoder."""
    timings = {mode: _best(mode, load, config, repeat) for mode in modes}
    ratios = {}
    for decoder_name in DECODERS:
        full, bare = timings.get(f"{decoder_name}+router"), timings.get(decoder_name)
        if full and bare:
            ratios[decoder_name] = {
                "cost_ratio": round(full.cpu / bare.cpu, 3),  # (b)/(c)
                "throughput_vs_bare": round(bare.cpu / full.cpu, 3),  # issue 7 target: >= 0.7
            }
    return {"timings": {name: t.as_dict() for name, t in timings.items()}, "ratios": ratios}


def profile_in_process(load: Workload, config: Config, top: int, out: Path | None) -> str:
    """cProfile of decode (kombu) + router; returns the top functions by own time."""
    profiler = cProfile.Profile()
    run = _runner("kombu+router", load, config)
    profiler.enable()
    pipeline = run()
    profiler.disable()
    assert pipeline is not None
    verify(pipeline, load)
    if out is not None:
        profiler.dump_stats(out)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


# -- broker mode ----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _redis_server(workdir: Path, unlimited_pubsub: bool) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (its log: workdir/redis.log)."""
    extra = ["--protected-mode", "no"]
    if unlimited_pubsub:
        # measure how fast the consumers drain, not Redis' slow-subscriber policy
        # (default: disconnect a subscriber 32 MB behind, which loses events)
        extra += ["--client-output-buffer-limit", "pubsub 0 0 0"]
    with RedisServer(workdir, extra_args=extra) as server:
        yield server.url()


@contextmanager
def _rabbitmq_server(workdir: Path) -> Iterator[str]:
    """A private RabbitMQ node (stack/rabbitmq.py, as in the tests); yields its URL."""
    with RabbitMQServer(workdir / "rabbitmq", management=False) as server:
        yield server.url


def _scrape(url: str) -> dict[str, float]:
    """Sum of the samples of each metric in a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = min(i for i in (line.find("{"), line.find(" ")) if i >= 0)
        name = line[:name_end]
        value = line.rsplit(" ", 1)[1]
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def _exporter_command() -> list[str]:
    script = Path(sys.executable).parent / "celery-vitals"
    return [str(script)] if script.exists() else [sys.executable, "-m", "celery_vitals"]


def _kombu_publish(
    url: str, load: Workload, indices: list[int], *, rate: float | None, progress: Any
) -> float:
    """Publish each body with a kombu Producer, exactly as Celery's event dispatcher does."""
    from celery.events.event import get_exchange
    from kombu import Connection

    with Connection(url) as connection:
        exchange = get_exchange(connection)
        producer = connection.Producer(exchange=exchange, auto_declare=False)
        exchange(producer.channel).declare()
        publish = producer.publish
        sent = 0
        start = time.perf_counter()
        for i in indices:
            _pace(start, sent, rate)
            publish(
                load.payloads[i],
                exchange=exchange.name,
                routing_key=load.routing_keys[i],
                content_type="application/json",
                content_encoding="utf-8",
                headers={"hostname": load.hostnames[i]},
                delivery_mode=1,
            )
            sent += load.events_in(i)
            progress.value = sent
        return time.perf_counter() - start


def redis_wire_messages(url: str, load: Workload) -> list[tuple[str, bytes]]:
    """(channel, PUBLISH payload) per body, byte for byte what kombu's redis transport sends.

    Why: a kombu Producer costs ~100 us per message, so one publisher process
    cannot outrun the consumers it is meant to saturate. The envelope is taken
    from kombu itself (one real publish per routing key, intercepted), then
    filled in per body; the first body is checked against a full kombu publish.
    """
    import base64

    from celery.events.event import get_exchange
    from kombu import Connection

    with Connection(url) as connection:
        exchange = get_exchange(connection)
        producer = connection.Producer(exchange=exchange, auto_declare=False)
        channel = producer.channel
        exchange(channel).declare()  # else kombu's virtual channel routes it as "direct"
        captured: list[tuple[list[str], dict[str, Any]]] = []

        def capture(exchange: str, message: dict[str, Any], routing_key: str, **_: Any) -> None:
            captured.append((channel._get_publish_topics(exchange, routing_key), message))

        channel._put_fanout = capture

        def kombu_message(i: int) -> tuple[list[str], dict[str, Any]]:
            producer.publish(
                load.payloads[i],
                exchange=exchange.name,
                routing_key=load.routing_keys[i],
                content_type="application/json",
                content_encoding="utf-8",
                headers={"hostname": load.hostnames[i]},
                delivery_mode=1,
            )
            return captured.pop()

        templates = {}
        for i, routing_key in enumerate(load.routing_keys):
            if routing_key not in templates:
                templates[routing_key] = kombu_message(i)
    if channel.body_encoding != "base64":
        raise RuntimeError(f"unexpected kombu body encoding {channel.body_encoding!r}")

    def build(i: int) -> tuple[list[str], dict[str, Any]]:
        topics, template = templates[load.routing_keys[i]]
        properties = {**template["properties"], "delivery_tag": str(uuid_module.uuid4())}
        return topics, {
            **template,
            "body": base64.b64encode(load.payloads[i]).decode(),
            "headers": {"hostname": load.hostnames[i]},
            "properties": properties,
        }

    dumps = kombu.utils.json.dumps
    reference_topics, reference = templates[load.routing_keys[0]]  # kombu's, for body 0
    topics, ours = build(0)
    ours["properties"]["delivery_tag"] = reference["properties"]["delivery_tag"]
    if (topics, dumps(ours)) != (reference_topics, dumps(reference)):
        raise RuntimeError("the hand-built redis message differs from kombu's")
    wire: list[tuple[str, bytes]] = []
    for i in range(len(load.payloads)):
        topics, message = build(i)
        payload = dumps(message).encode()
        wire.extend((topic, payload) for topic in topics)
    if len(wire) != len(load.payloads):
        raise RuntimeError("kombu publishes each event message to several channels")
    return wire


def publisher_lanes(load: Workload, count: int) -> list[list[int]]:
    """Body indices for each of ``count`` publishers, in delivery order.

    A worker's bodies (its task-event batches and heartbeats) and the
    task-sent of every task it runs go to the same lane, so that the events of
    one task reach the broker in the order they were generated however the
    publishers interleave.
    """
    if count <= 1:
        return [list(range(len(load.bodies)))]
    worker_hosts = sorted(
        {
            host
            for host, key in zip(load.hostnames, load.routing_keys, strict=True)
            if key != "task.sent"
        }
    )
    lane_of_host = {host: i % count for i, host in enumerate(worker_hosts)}
    lane_of_task: dict[str, int] = {}
    for body, host in zip(load.bodies, load.hostnames, strict=True):
        if type(body) is list:
            for event in body:
                lane_of_task.setdefault(event["uuid"], lane_of_host[host])
    lanes: list[list[int]] = [[] for _ in range(count)]
    for i, (body, host) in enumerate(zip(load.bodies, load.hostnames, strict=True)):
        if load.routing_keys[i] == "task.sent":
            assert type(body) is dict
            lanes[lane_of_task.get(body["uuid"], 0)].append(i)
        else:
            lanes[lane_of_host[host]].append(i)
    return lanes


def _pace(start: float, sent: int, rate: float | None) -> None:
    """Sleep until ``sent`` events are due at ``rate`` events/s (no-op at full speed)."""
    if rate:
        ahead = start + sent / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)


def _pipeline_publish(
    url: str,
    load: Workload,
    wire: list[tuple[str, bytes]],
    indices: list[int],
    *,
    rate: float | None,
    progress: Any,
    chunk: int = 64,
) -> float:
    """PUBLISH the pre-built messages in pipelined chunks (paced per chunk with --rate)."""
    import redis

    client = redis.Redis.from_url(url)
    sent = 0
    start = time.perf_counter()
    for first in range(0, len(indices), chunk):
        _pace(start, sent, rate)
        pipe = client.pipeline(transaction=False)
        batch = indices[first : first + chunk]
        for i in batch:
            pipe.publish(*wire[i])
        pipe.execute()
        sent += sum(load.events_in(i) for i in batch)
        progress.value = sent
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


class _FrameCapture:
    """A stand-in for py-amqp's transport: keeps the bytes it is asked to write."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: Any) -> None:
        self.chunks.append(bytes(data))

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def amqp_wire_frames(url: str, load: Workload) -> tuple[int, list[bytes]]:
    """(channel id, the AMQP frames of one basic.publish per body), as py-amqp writes them.

    Why: as for Redis, kombu's Producer (~100 us a message) is too slow to
    saturate the consumers from one process, and even py-amqp's basic_publish
    (frames built per call) held a publisher to ~41k events/s on two shared
    cores. The frames are built here once, with the properties kombu's pyamqp
    transport gives an event message, and the publisher only writes bytes.
    Body 0's frames are checked against a full kombu publish.
    """
    import amqp
    from amqp.method_framing import frame_writer
    from celery.events.event import get_exchange
    from kombu import Connection

    with Connection(url) as connection:
        exchange = get_exchange(connection)
        producer = connection.Producer(exchange=exchange, auto_declare=False)
        channel = producer.channel
        exchange(channel).declare()
        transport = channel.connection  # the amqp.Connection
        capture = _FrameCapture()
        saved = transport.frame_writer
        transport.frame_writer = frame_writer(transport, capture)
        try:
            captured: list[Any] = []
            basic_publish = channel.basic_publish

            def keep(message: Any, *args: Any, **kwargs: Any) -> Any:
                captured.append(message)
                return basic_publish(message, *args, **kwargs)

            channel.basic_publish = keep
            producer.publish(
                load.payloads[0],
                exchange=exchange.name,
                routing_key=load.routing_keys[0],
                content_type="application/json",
                content_encoding="utf-8",
                headers={"hostname": load.hostnames[0]},
                delivery_mode=1,
            )
            channel.basic_publish = basic_publish
            reference = capture.take()
            template = dict(captured[0].properties)
            frames = []
            for payload, host, routing_key in zip(
                load.payloads, load.hostnames, load.routing_keys, strict=True
            ):
                message = amqp.Message(
                    payload, **{**template, "application_headers": {"hostname": host}}
                )
                basic_publish(message, exchange=exchange.name, routing_key=routing_key)
                frames.append(capture.take())
        finally:
            transport.frame_writer = saved
        channel_id: int = channel.channel_id
    if frames[0] != reference:
        raise RuntimeError("the hand-built AMQP frames differ from kombu's")
    return channel_id, frames


def _amqp_publish(
    url: str,
    load: Workload,
    wire: tuple[int, list[bytes]],
    indices: list[int],
    *,
    rate: float | None,
    progress: Any,
    chunk: int = 16,
) -> float:
    """Write the pre-built basic.publish frames to the socket in chunks (no confirms)."""
    from celery.events.event import get_exchange
    from kombu import Connection

    channel_id, frames = wire
    with Connection(url) as connection:
        exchange = get_exchange(connection)
        channel = connection.default_channel
        exchange(channel).declare()
        if channel.channel_id != channel_id:
            raise RuntimeError(
                f"frames built for channel {channel_id}, publishing on {channel.channel_id}"
            )
        sendall = connection.connection.transport.sock.sendall
        sent = 0
        start = time.perf_counter()
        for first in range(0, len(indices), chunk):
            _pace(start, sent, rate)
            batch = indices[first : first + chunk]
            sendall(b"".join([frames[i] for i in batch]))
            sent += sum(load.events_in(i) for i in batch)
            progress.value = sent
        elapsed = time.perf_counter() - start
    return elapsed  # closing waited for close-ok: the broker has taken every frame


def _publisher(
    url: str,
    load: Workload,
    wire: Any,
    indices: list[int],
    *,
    rate: float | None,
    progress: Any,
    conn: Any,
) -> None:
    """Publisher process body (one lane of the bodies); reports how long publishing took.

    ``progress`` (a shared integer) follows the events sent so far.
    """
    if wire is None:
        elapsed = _kombu_publish(url, load, indices, rate=rate, progress=progress)
    elif url.startswith("redis"):
        elapsed = _pipeline_publish(url, load, wire, indices, rate=rate, progress=progress)
    else:
        elapsed = _amqp_publish(url, load, wire, indices, rate=rate, progress=progress)
    conn.send(
        {
            "events": sum(load.events_in(i) for i in indices),
            "bodies": len(indices),
            "seconds": elapsed,
        }
    )
    conn.close()


def _ping(url: str) -> None:
    from celery.events.event import get_exchange
    from kombu import Connection

    with Connection(url) as connection:
        exchange = get_exchange(connection)
        producer = connection.Producer(exchange=exchange, auto_declare=False)
        exchange(producer.channel).declare()
        producer.publish(
            {"type": PING_TYPE, "timestamp": time.time()},
            exchange=exchange.name,
            routing_key="bench.ping",
            serializer="json",
        )


def _start_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the exporter (all threads, without pausing it) while it consumes."""
    binary = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if binary is None:
        raise SystemExit("--spy needs py-spy (pip install py-spy)")
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the first event
    return spy


EXPORTER_TASK_METRICS = {
    "sent": "celery_task_sent_total",
    "received": "celery_task_received_total",
    "started": "celery_task_started_total",
    "succeeded": "celery_task_succeeded_total",
    "failed": "celery_task_failed_total",
    "retried": "celery_task_retried_total",
}


OUTPUT_BUFFER_LOG_LINE = "for overcoming of output buffer limits"  # redis-server's warning


class _RedisWatch:
    """Redis' view of a slow subscriber: its output buffer during the run, disconnects after.

    Redis 7.0 has no ``client_output_buffer_limit_disconnections`` in INFO
    stats (7.2 added it): the disconnects are counted from the warning
    redis-server logs for each one, and the stat is recorded where it exists.
    """

    def __init__(self, url: str, log: Path) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.log = log
        self.peak_output_bytes = 0
        self.peak_output_list = 0
        self.subscribers_seen = 0

    def sample(self) -> None:
        for client in self.client.client_list():
            if "P" in client.get("flags", ""):  # a pub/sub subscriber
                self.peak_output_bytes = max(self.peak_output_bytes, int(client["omem"]))
                self.peak_output_list = max(self.peak_output_list, int(client["oll"]))

    def report(self) -> dict[str, Any]:
        stats = self.client.info("stats")
        limit = self.client.config_get("client-output-buffer-limit")
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        self.client.close()
        return {
            "output_buffer_disconnects_logged": log.count(OUTPUT_BUFFER_LOG_LINE),
            "client_output_buffer_limit_disconnections": stats.get(
                "client_output_buffer_limit_disconnections"
            ),  # Redis >= 7.2
            "total_connections_received": stats.get("total_connections_received"),
            "peak_subscriber_output_buffer_bytes": self.peak_output_bytes,
            "peak_subscriber_output_list_length": self.peak_output_list,
            "client_output_buffer_limit": limit.get("client-output-buffer-limit"),
        }


def run_broker(
    load: Workload,
    broker: str,
    rate: float | None,
    *,
    idle: float,
    poll: float,
    publisher_kind: str,
    spy_output: Path | None = None,
    exporter_command: Sequence[str] | None = None,
    bare: bool = True,
    publishers: int = 1,
) -> dict[str, Any]:
    """Publish through a real broker to `celery-vitals serve` and the bare receiver at once.

    At full speed the broker's limits on a slow consumer are lifted (Redis'
    pub/sub output buffer, the event queues' 5 s message TTL on RabbitMQ) so
    that the run measures how fast each consumer drains, not the broker's
    policy; with --rate the defaults stay, and loss is what a deployment sees.
    ``bare=False`` runs the exporter alone (the loss runs: on two cores a
    second consumer takes CPU the exporter would have); ``publishers`` splits
    the bodies over that many publisher processes (see publisher_lanes).
    """
    import multiprocessing

    full_speed = rate is None
    consumers = ("exporter", "bare") if bare else ("exporter",)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cv-bench-")))
        if broker == "redis":
            url = stack.enter_context(_redis_server(workdir, unlimited_pubsub=full_speed))
        else:
            url = stack.enter_context(_rabbitmq_server(workdir))
        # at full speed the backlog is the point: lift the event queue's TTL and length cap
        queue_ttl = (
            ["--event-queue-ttl", "3600", "--event-queue-max-length", "100000000"]
            if full_speed and broker == "amqp"
            else []
        )
        http_port = free_port()
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        exporter = ManagedProcess(
            "exporter",
            [
                *(exporter_command or _exporter_command()),
                "serve",
                "--broker-url",
                url,
                "--listen-address",
                f"127.0.0.1:{http_port}",
                "--no-enable-events",
                "--log-level",
                "warning",
                *queue_ttl,
            ],
            workdir / "exporter.log",
        )
        stack.callback(exporter.stop)
        exporter.spawn()
        processes = {"exporter": exporter}
        status = workdir / "bare"
        if bare:
            processes["bare"] = ManagedProcess(
                "bare receiver",
                [
                    sys.executable,
                    str(HERE / "bare_receiver.py"),
                    "--broker-url",
                    url,
                    "--expect",
                    str(load.events),
                    "--status",
                    str(status),
                    "--idle",
                    str(idle),
                    *(["--queue-ttl", "3600"] if queue_ttl else []),
                ],
                workdir / "bare.log",
            )
            stack.callback(processes["bare"].stop)
            processes["bare"].spawn()

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as r:
                return bool(r.status == 200)

        wait_until(
            ready, timeout=30, what="the exporter's /readyz", interval=0.1, ignore=(Exception,)
        )

        def bound() -> bool:  # a ping reached every consumer: their queues are bound
            _ping(url)
            time.sleep(0.1)
            return _scrape(metrics_url).get("celery_vitals_events_total", 0) > 0 and (
                not bare or Path(f"{status}.ping").exists()
            )

        wait_until(
            bound,
            timeout=30,
            what="the consumers to receive a ping",
            interval=0.1,
            ignore=(Exception,),
        )
        time.sleep(1.0)  # let stray pings land before the baseline
        for process in processes.values():
            if not process.running:
                raise RuntimeError(f"a consumer exited early; see {workdir}")
        baseline = _scrape(metrics_url)
        # the exporter's idle cost: its tick thread, no scrapes
        idle_cpu0, idle_t0 = _cpu_seconds(exporter.pid), time.perf_counter()
        time.sleep(2.0)
        idle_cpu_per_second = (_cpu_seconds(exporter.pid) - idle_cpu0) / (
            time.perf_counter() - idle_t0
        )

        wire: Any = None
        if publisher_kind == "pipeline":
            wire = (
                redis_wire_messages(url, load) if broker == "redis" else amqp_wire_frames(url, load)
            )
        watch = _RedisWatch(url, workdir / "redis.log") if broker == "redis" else None
        lanes = publisher_lanes(load, publishers)
        cpu0 = {name: _cpu_seconds(p.pid) for name, p in processes.items()}
        ctx = multiprocessing.get_context("fork")
        receive_end, send_end = ctx.Pipe(duplex=False)
        sent_so_far = [ctx.Value("q", 0, lock=False) for _ in lanes]
        workers = [
            ctx.Process(
                target=_publisher,
                daemon=True,
                args=(url, load, wire, lane),
                kwargs={"rate": _lane_rate(load, lane, rate), "progress": sent, "conn": send_end},
            )
            for lane, sent in zip(lanes, sent_so_far, strict=True)
        ]
        spy = _start_spy(exporter.pid, spy_output) if spy_output else None
        t0 = time.time()
        for worker in workers:
            worker.start()
        send_end.close()
        reports: list[dict[str, Any]] = []
        published: dict[str, Any] | None = None
        done: dict[str, dict[str, Any]] = {}
        progress: list[tuple[float, float]] = [(t0, 0.0)]  # (time, events the exporter counted)
        scrapes, next_scrape = 0, t0 + poll
        peak_backlog = 0
        backlog: list[tuple[float, int, int]] = []  # (seconds since start, published, counted)
        while len(done) < len(consumers):
            while published is None and receive_end.poll():
                reports.append(receive_end.recv())
                if len(reports) == len(workers):
                    published = _published(reports)
                    for worker in workers:
                        worker.join()
            now = time.time()
            if "exporter" not in done and now >= next_scrape:
                # a scrape costs the exporter CPU: scrape seldom, interpolate the end
                sent_now = sum(sent.value for sent in sent_so_far)
                counts = _scrape(metrics_url)
                scrapes += 1
                next_scrape = now + poll
                if watch is not None:
                    watch.sample()
                counted = (
                    counts["celery_vitals_events_total"] - baseline["celery_vitals_events_total"]
                )
                peak_backlog = max(peak_backlog, int(sent_now - counted))
                backlog.append((round(now - t0, 2), int(sent_now), int(counted)))
                if counted != progress[-1][1]:
                    progress.append((now, counted))
                stalled = published is not None and now - progress[-1][0] > idle
                if counted >= load.events or stalled:
                    metrics = {
                        name: value - baseline.get(name, 0.0) for name, value in counts.items()
                    }
                    done["exporter"] = {
                        "events": int(counted),
                        "seconds": _finish_time(progress, load.events) - t0,
                        "cpu": _cpu_seconds(exporter.pid) - cpu0["exporter"],
                        "scrapes": scrapes,
                        "metrics": counts,
                        "run_metrics": metrics,
                        "peak_backlog": peak_backlog,
                        "backlog": backlog,
                    }
            if bare and "bare" not in done and Path(f"{status}.done").exists():
                report = json.loads(Path(f"{status}.done").read_text())
                done["bare"] = {
                    "events": report["events"],
                    "seconds": (report["last"] or now) - t0,
                    "cpu": _cpu_seconds(processes["bare"].pid) - cpu0["bare"],
                }
            for worker in workers:
                if worker.exitcode not in (None, 0):
                    raise RuntimeError(f"a publisher failed (exit code {worker.exitcode})")
            time.sleep(0.02)
        while published is None:
            reports.append(receive_end.recv())
            if len(reports) == len(workers):
                published = _published(reports)
        for worker in workers:
            worker.join()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(timeout=60)
        # what one of our scrapes cost the exporter, with every series present
        scrape_cpu0, scrape_t0 = _cpu_seconds(exporter.pid), time.perf_counter()
        for _ in range(10):
            _scrape(metrics_url)
        scrape = {
            "cpu_ms": (_cpu_seconds(exporter.pid) - scrape_cpu0) * 100,
            "wall_ms": (time.perf_counter() - scrape_t0) * 100,
        }
        done["exporter"]["scrape"] = scrape
        broker_stats = watch.report() if watch is not None else {}

    return _broker_report(
        load,
        broker,
        rate,
        published=published,
        done=done,
        idle_cpu_per_second=idle_cpu_per_second,
        poll=poll,
        broker_stats=broker_stats,
    )


def _lane_rate(load: Workload, lane: list[int], rate: float | None) -> float | None:
    """A lane's share of the target rate, so that every publisher ends at the same time."""
    if not rate:
        return None
    return rate * sum(load.events_in(i) for i in lane) / load.events


def _published(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The publishers' reports as one: they ran side by side, so the slowest one's time."""
    return {
        "events": sum(r["events"] for r in reports),
        "bodies": sum(r["bodies"] for r in reports),
        "seconds": max(r["seconds"] for r in reports),
        "publishers": len(reports),
    }


def _finish_time(progress: list[tuple[float, float]], expected: int) -> float:
    """When the count reached ``expected``, from scrapes a poll interval apart.

    Extrapolates from the rate between the last two scrapes below the end,
    capped by the scrape that saw it complete.
    """
    if progress[-1][1] < expected or len(progress) < 3:
        return progress[-1][0]
    (t1, c1), (t2, c2), (t3, _) = progress[-3:]
    rate = (c2 - c1) / (t2 - t1) if t2 > t1 else 0.0
    return min(t3, t2 + (expected - c2) / rate) if rate > 0 else t3


def _broker_report(
    load: Workload,
    broker: str,
    rate: float | None,
    *,
    published: dict[str, Any],
    done: dict[str, dict[str, Any]],
    idle_cpu_per_second: float,
    poll: float,
    broker_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    consumers: dict[str, Any] = {}
    for name in ("bare", "exporter"):
        if name not in done:  # the exporter alone (--no-bare)
            continue
        result = done[name]
        events, seconds, cpu = result["events"], result["seconds"], result["cpu"]
        extra = {}
        if "scrapes" in result:  # our progress scrapes are not the exporter's work: take them out
            scrape_cpu = result["scrape"]["cpu_ms"] / 1000
            run_metrics = result["run_metrics"]
            extra = {
                "cpu_seconds_with_our_scrapes": round(cpu, 3),
                "progress_scrapes": result["scrapes"],
                "scrape_cpu_ms": round(result["scrape"]["cpu_ms"], 2),
                "scrape_wall_ms": round(result["scrape"]["wall_ms"], 2),
                # from its /metrics, this run only (less the baseline before publishing)
                "reconnects": int(
                    run_metrics.get("celery_vitals_event_stream_reconnects_total", 0)
                ),
                "heartbeats_missed": int(
                    run_metrics.get("celery_vitals_heartbeats_missed_total", 0)
                ),
                # most events published and not yet counted, at our progress scrapes
                "peak_backlog_events": result["peak_backlog"],
                "backlog_samples": result["backlog"],
            }
            cpu = max(0.0, cpu - result["scrapes"] * scrape_cpu)
        us = cpu / events * 1e6 if events else 0.0
        consumers[name] = {
            "events": events,
            "lost": published["events"] - events,
            "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds) if seconds > 0 else 0,
            "cpu_seconds": round(cpu, 3),
            "cpu_us_per_event": round(us, 3),
            "events_per_cpu_second": round(1e6 / us) if us else 0,
            **extra,
        }
    exporter, bare = consumers["exporter"], consumers.get("bare")
    metrics = done["exporter"]["metrics"]
    task_counters = {
        kind: int(metrics.get(metric, 0)) for kind, metric in EXPORTER_TASK_METRICS.items()
    }
    expected = {kind: sum(c.values()) for kind, c in load.counters.items()}
    problems = []
    if exporter["lost"] or (bare and bare["lost"]):
        problems.append(
            f"lost events: exporter {exporter['lost']}" + (f", bare {bare['lost']}" if bare else "")
        )
    if task_counters != expected:
        problems.append(f"task counters {task_counters} != published {expected}")
    ratios: dict[str, float | None] = {"wall_throughput": None, "cpu_throughput": None}
    if bare:
        ratios = {
            "wall_throughput": round(exporter["events_per_second"] / bare["events_per_second"], 3)
            if bare["events_per_second"]
            else None,
            "cpu_throughput": round(bare["cpu_us_per_event"] / exporter["cpu_us_per_event"], 3)
            if exporter["cpu_us_per_event"]
            else None,
        }
    return {
        "mode": broker,
        "rate": rate,
        "published": {
            "events": published["events"],
            "bodies": published["bodies"],
            "seconds": round(published["seconds"], 3),
            "events_per_second": round(published["events"] / published["seconds"]),
            "publishers": published.get("publishers", 1),
        },
        "consumers": consumers,
        "ratios": ratios,
        "exporter_task_counters": task_counters,
        "expected_task_counters": expected,
        "exporter_idle_cpu_ms_per_second": round(idle_cpu_per_second * 1000, 2),
        "poll_interval": poll,
        "broker_stats": broker_stats or {},
        "problems": problems,
    }


# -- report -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import celery
    import kombu

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def print_report(result: dict[str, Any]) -> None:
    load = result["workload"]
    print(
        f"{load['events']} events ({load['bodies']} bodies, {load['tasks']} tasks, "
        f"batches of up to {load['batch']}, {load['payload_bytes'] / 1e6:.1f} MB of JSON)"
    )
    if "in_process" in result:
        timings = result["in_process"]["timings"]
        rows: list[list[object]] = [["in process", "events/s", "CPU us/event", "CPU s"]]
        labels = {
            "router": "(a) router, decoded bodies",
            "kombu+router": "(b) kombu json decode + router",
            "kombu": "(c) kombu json decode only (bare)",
            "json+router": "(b') json.loads + router",
            "json": "(c') json.loads only (bare)",
        }
        for key, label in labels.items():
            if key not in timings:
                continue
            t = timings[key]
            rows.append(
                [
                    label,
                    f"{t['events_per_second']:,}",
                    f"{t['cpu_us_per_event']:.2f}",
                    f"{t['cpu_seconds']:.2f}",
                ]
            )
        print(table(rows))
        for decoder, ratio in result["in_process"]["ratios"].items():
            print(
                f"{decoder}: (b)/(c) cost ratio {ratio['cost_ratio']:.2f}; exporter runs at "
                f"{ratio['throughput_vs_bare']:.0%} of the bare decoder's throughput"
            )
    if "broker" in result:
        broker = result["broker"]
        pub = broker["published"]
        publishers = pub.get("publishers", 1)
        print(
            f"\n{broker['mode']}: published {pub['events']:,} events in {pub['seconds']:.2f}s "
            f"({pub['events_per_second']:,}/s{', paced' if broker['rate'] else ''}"
            f"{f', {publishers} publishers' if publishers > 1 else ''})"
        )
        rows = [["consumer", "events", "lost", "events/s (wall)", "CPU us/event", "events/CPU-s"]]
        for name, c in broker["consumers"].items():
            rows.append(
                [
                    name,
                    f"{c['events']:,}",
                    c["lost"],
                    f"{c['events_per_second']:,}",
                    f"{c['cpu_us_per_event']:.2f}",
                    f"{c['events_per_cpu_second']:,}",
                ]
            )
        print(table(rows))
        ratios = broker["ratios"]
        exporter = broker["consumers"]["exporter"]
        if "bare" in broker["consumers"]:
            print(
                f"exporter / bare: {ratios['wall_throughput']} (wall), "
                f"{ratios['cpu_throughput']} (CPU per event)"
            )
        else:
            print("exporter alone (--no-bare): no ratio to the bare receiver")
        print(
            f"exporter: {exporter['reconnects']} event-stream reconnects, "
            f"{exporter['heartbeats_missed']} heartbeats missed, peak backlog "
            f"{exporter['peak_backlog_events']:,} events (published, not yet counted)"
        )
        stats = broker.get("broker_stats") or {}
        if stats:
            print(
                f"redis: {stats['output_buffer_disconnects_logged']} subscriber(s) "
                f"disconnected for output buffer limits (server log), peak subscriber "
                f"output buffer {stats['peak_subscriber_output_buffer_bytes'] / 2**20:.1f} "
                f"MiB, limit {stats['client_output_buffer_limit']!r}"
            )
        print(
            f"exporter: idle CPU {broker['exporter_idle_cpu_ms_per_second']} ms/s; one "
            f"/metrics scrape {exporter['scrape_cpu_ms']} ms CPU, {exporter['scrape_wall_ms']} "
            f"ms wall; its CPU above excludes our {exporter['progress_scrapes']} progress "
            f"scrapes (with them: {exporter['cpu_seconds_with_our_scrapes']} s)"
        )
        for problem in broker["problems"]:
            print(f"PROBLEM: {problem}")
    if "profile" in result:
        print("\n" + result["profile"])


# -- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/throughput.py",
        description="Event throughput of celery-vitals (in process, or via a real broker).",
    )
    parser.add_argument("--tasks", type=int, default=200_000, help="tasks to simulate")
    parser.add_argument(
        "--batch",
        type=int,
        default=24,
        help="worker event buffer size (Celery's default limit: 24)",
    )
    parser.add_argument("--workers", type=int, default=8, help="simulated workers")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--repeat", type=int, default=3, help="in process: best of N runs (least CPU)"
    )
    parser.add_argument(
        "--modes",
        default=",".join(IN_PROCESS_MODES),
        help="in process: comma-separated subset of " + ", ".join(IN_PROCESS_MODES),
    )
    parser.add_argument(
        "--broker",
        choices=("redis", "amqp"),
        nargs="?",
        const="redis",
        help="publish through a real broker instead of timing in process",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="broker mode: events/s to publish at (default: full speed)",
    )
    parser.add_argument(
        "--publisher",
        choices=("pipeline", "kombu"),
        default="pipeline",
        help="broker mode: messages built as kombu builds them, sent in Redis "
        "pipelines or by py-amqp directly (fast enough to saturate the "
        "consumers), or one kombu Producer.publish per message (as Celery "
        "does; ~100 us each)",
    )
    parser.add_argument(
        "--no-bare",
        dest="bare",
        action="store_false",
        help="broker mode: run the exporter alone, without the bare receiver "
        "(loss runs: on two cores it takes the exporter's CPU)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=1,
        help="broker mode: publisher processes, each sending its share of the "
        "workers' bodies (and their tasks' task-sent) in order",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="broker mode: seconds without progress that end a consumer's run",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="broker mode: seconds between /metrics scrapes to watch progress",
    )
    parser.add_argument(
        "--exporter-command",
        default="",
        metavar="CMD",
        help="broker mode: run this instead of `celery-vitals` (e.g. a variant "
        "to compare); `serve --broker-url ...` is appended",
    )
    parser.add_argument(
        "--spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="broker mode: record the exporter with py-spy (raw/collapsed "
        "stacks) into FILE while it consumes",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile decode + router with cProfile"
    )
    parser.add_argument("--top", type=int, default=25, help="profile: functions to show")
    parser.add_argument(
        "--smoke", action="store_true", help="a few thousand events, in process only, one run"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file (default: benchmarks/results/throughput-<mode>.json)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks, args.repeat, args.broker = min(args.tasks, 1000), 1, None
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(args.modes) <= set(IN_PROCESS_MODES):
        parser.error(f"--modes: expected some of {', '.join(IN_PROCESS_MODES)}")
    if min(args.tasks, args.batch, args.workers, args.repeat, args.publishers) < 1:
        parser.error("--tasks, --batch, --workers, --repeat and --publishers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    mode = "smoke" if args.smoke else (args.broker or "inprocess")
    result: dict[str, Any] = {"benchmark": "throughput", "mode": mode, "machine": machine()}
    gen0 = time.perf_counter()
    load = generate(args.tasks, seed=args.seed, batch=args.batch, workers=args.workers)
    result["workload"] = {
        "tasks": load.tasks,
        "events": load.events,
        "bodies": len(load.bodies),
        "batch": args.batch,
        "workers": args.workers,
        "payload_bytes": load.payload_bytes,
        "by_type": dict(load.by_type),
        "generate_seconds": round(time.perf_counter() - gen0, 2),
    }
    # The pre-generated bodies are long-lived: keep the cyclic GC from re-scanning
    # them on every collection, which a real exporter (holding no such heap) never does.
    gc.collect()
    gc.freeze()
    try:
        config = default_config()
        if args.broker:
            result["broker"] = run_broker(
                load,
                args.broker,
                args.rate,
                idle=args.idle,
                poll=args.poll,
                publisher_kind=args.publisher,
                spy_output=args.spy,
                exporter_command=shlex.split(args.exporter_command),
                bare=args.bare,
                publishers=args.publishers,
            )
        else:
            result["in_process"] = run_in_process(load, config, args.repeat, args.modes)
        if args.profile:
            RESULTS.mkdir(parents=True, exist_ok=True)
            result["profile"] = profile_in_process(
                load, config, args.top, None if args.no_write else RESULTS / "throughput.prof"
            )
    finally:
        gc.unfreeze()
    publish(
        result,
        None if args.no_write else args.output or RESULTS / f"throughput-{mode}.json",
        print_report,
        quiet=args.quiet,
    )
    if result.get("broker", {}).get("problems"):
        raise VerificationError("; ".join(result["broker"]["problems"]))
    return result


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except VerificationError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        raise SystemExit(1) from None
