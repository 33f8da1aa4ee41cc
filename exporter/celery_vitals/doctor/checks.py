"""The doctor's checks: each takes the Observation (look.py) and yields Findings."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from celery_vitals import AGENT_CONF_KEY
from celery_vitals.doctor.findings import FAIL, OK, WARN, Finding, names_of
from celery_vitals.doctor.look import Observation, WorkerView, seconds

#: Tasks allowed to run at least this long are "long" for the prefetch check.
LONG_TASK = 30.0


# -- the checks ----------------------------------------------------------------------------
# Each takes the Observation and yields Findings. Their names are public (--json).

Check = Callable[[Observation], Iterable[Finding]]
_EVENTS_FIX = (
    "start workers with -E (worker_send_task_events=True), or keep "
    "`celery-vitals serve` running with --enable-events (the default), which "
    "turns them on every --enable-events-interval"
)


def check_broker(seen: Observation) -> Iterator[Finding]:
    where = seen.config.safe_broker_url
    if seen.broker_problem is not None:  # not the broker's fault: the network is not in it
        yield Finding("broker", FAIL, seen.broker_problem.detail, seen.broker_problem.fix)
        return
    if seen.broker_error is not None:
        yield Finding(
            "broker",
            FAIL,
            f"cannot reach the broker at {where}: {seen.broker_error}",
            "check --broker-url (CELERY_VITALS_BROKER_URL), the network and the "
            "broker's credentials",
        )
        return
    assert seen.broker is not None
    info = seen.broker.info
    version = info.get("version")
    kind = seen.config.broker
    if not version and kind.tells_version:  # SQS has no version to tell
        version = "unknown version"
    broker = " ".join(part for part in (info.get("transport", kind.name), version) if part)
    yield Finding(
        "broker",
        OK,
        f"{broker} at {where} answered in {seen.broker_seconds * 1000:.0f} ms",
    )


def check_persistence(seen: Observation) -> Iterator[Finding]:
    assert seen.broker is not None
    persistence = seen.config.broker.persistence
    if persistence == "retention":
        yield Finding(
            "broker-persistence",
            OK,
            "SQS keeps each message until it is deleted or its queue's retention period "
            "(MessageRetentionPeriod) ends",
        )
        return
    if persistence == "disk":
        kinds = seen.broker.persistence
        on = sorted(kind for kind, enabled in kinds.items() if enabled)
        if on:
            yield Finding("broker-persistence", OK, f"Redis persists to disk ({', '.join(on)})")
        else:
            said = ", ".join(f"{kind} off" for kind in sorted(kinds)) or "not told"
            yield Finding(
                "broker-persistence",
                WARN,
                f"Redis has no persistence ({said}): a restart loses every queued "
                "and unacknowledged task",
                "turn on AOF (appendonly yes) or RDB snapshots (save) on the broker",
            )
        return
    if not seen.durable:
        why = f" ({seen.durable_error})" if seen.durable_error else ""
        yield Finding(
            "broker-persistence",
            WARN,
            "cannot tell whether the task queues are durable without the RabbitMQ "
            f"management API{why}",
            "pass --rabbitmq-management-url (with credentials allowed to list queues) to "
            "check queue durability",
        )
        return
    transient = sorted(name for name in seen.consumed if seen.durable.get(name) is False)
    if transient:
        yield Finding(
            "broker-persistence",
            WARN,
            f"queues {names_of(transient)} are not durable: a broker restart loses "
            "them and their messages",
            "declare task queues durable (Queue(..., durable=True) in task_queues, "
            "Celery's default)",
        )
    else:
        yield Finding("broker-persistence", OK, "every consumed queue is durable")


def check_workers(seen: Observation) -> Iterator[Finding]:
    if not seen.remote_control:
        yield Finding(
            "workers",
            WARN,
            "SQS has no remote control and no events: workers cannot be asked or "
            "listened to, and their task events are not checked",
            "install the agent in the workers (celery_vitals.agent.install(app)), have "
            "Prometheus scrape it (port 9809), and check one with --exporter-url "
            "http://WORKER:9809",
        )
        return
    if seen.workers_error is not None and not seen.workers:
        yield Finding(
            "workers",
            FAIL,
            f"asking the workers failed: {seen.workers_error}",
            "check that the broker accepts remote-control broadcasts "
            "(worker_enable_remote_control)",
        )
        return
    if not seen.workers:
        yield Finding(
            "workers",
            FAIL,
            "no worker answered a ping",
            "start workers on this broker (same --broker-url and vhost/db), or "
            "enable remote control (worker_enable_remote_control=True)",
        )
        return
    for host, worker in sorted(seen.workers.items()):
        version = seen.events.versions.get(host, "unknown")
        timeouts = worker.pool.get("timeouts")
        yield Finding(
            "workers",
            OK,
            f"{host}: celery {version}, pool {worker.pool_name} x{worker.concurrency}, "
            f"prefetch multiplier {worker.prefetch_multiplier} (limit "
            f"{worker.prefetch_limit}), acks_late tasks {len(worker.acks_late_tasks())} of "
            f"{len(worker.tasks)}, max-tasks-per-child "
            f"{worker.pool.get('max-tasks-per-child', 'N/A')}, time limits (soft, hard) "
            f"{tuple(timeouts) if isinstance(timeouts, list | tuple) else 'N/A'}",
            subject=host,
        )


def check_task_events(seen: Observation) -> Iterator[Finding]:
    if not seen.remote_control:  # said by check_workers
        return
    if not seen.listening:
        yield Finding(
            "task-events",
            WARN,
            "could not consume the event stream: task events were not checked",
            "check that the broker allows the event exchange (celeryev) to be consumed",
        )
        return
    for host, worker in sorted(seen.workers.items()):
        events = seen.events.task_events.get(host, 0)
        configured = worker.conf.get("worker_send_task_events") is True
        if events:
            yield Finding(
                "task-events",
                OK,
                f"{host}: task events on ({events} in {seen.listen:g}s)",
                subject=host,
            )
        elif isinstance(worker.conf.get(AGENT_CONF_KEY), str):
            yield Finding(
                "task-events",
                OK,
                f"{host}: task events off, and not needed: the celery-vitals agent runs in "
                f"it (on {worker.conf[AGENT_CONF_KEY]})",
                subject=host,
            )
        elif worker.processed_during:
            yield Finding(
                "task-events",
                FAIL,
                f"{host}: finished {worker.processed_during} tasks in "
                f"{seen.listen:g}s and sent no task event: task events are off and "
                "no `celery-vitals serve` turns them on (the worker answers remote "
                "control, so `serve --enable-events` would)",
                _EVENTS_FIX,
                subject=host,
            )
        elif configured:
            yield Finding(
                "task-events",
                OK,
                f"{host}: worker_send_task_events=True (idle during the window)",
                subject=host,
            )
        else:
            yield Finding(
                "task-events",
                WARN,
                f"{host}: idle during the {seen.listen:g}s window and "
                "worker_send_task_events is not set: task events are probably off "
                "(-E on the command line does not show)",
                _EVENTS_FIX,
                subject=host,
            )


_STAMP_FIX = (
    "call celery_vitals.agent.install(app) in every process that publishes tasks (web "
    "servers, scripts, celery beat), not only in the workers: it stamps each task with its "
    "publication time (docs/agent.md, publishers)"
)


def check_task_sent(seen: Observation) -> Iterator[Finding]:
    """Where queue wait comes from: task-sent events in the event setup, the publication
    stamp in the agent setup (workers with the agent, an exporter without the event stream);
    a mixed fleet gets both findings."""
    agent_setup = _agent_setup(seen)
    if agent_setup:
        yield _stamp_finding(seen, agent_setup)
        agents = _agent_hosts(seen)
        if not any(host not in agents for host in seen.events.task_events):
            return  # no worker without the agent sends task events: task-sent serves none
    events = seen.events
    if not seen.listening:
        return
    if events.sent:
        yield Finding("task-sent-events", OK, f"{events.sent} task-sent events in {seen.listen:g}s")
    elif events.received:
        yield Finding(
            "task-sent-events",
            WARN,
            f"{events.received} tasks received in {seen.listen:g}s and no task-sent "
            "event: publishers do not send them, so queue attribution and queue "
            "wait are missing",
            "set task_send_sent_event=True in the Celery config of every publisher",
        )
    else:
        yield Finding(
            "task-sent-events",
            WARN,
            f"no task was received during the {seen.listen:g}s window: cannot tell "
            "whether publishers send task-sent events",
            "run the doctor while tasks are published (a longer --listen)",
        )


def _scraped(seen: Observation) -> Mapping[str, float]:
    """The series of --exporter-url's /metrics (the last scrape), none where it failed."""
    view = seen.exporter
    if view is None or view.error is not None:
        return {}
    return view.after or view.before


def _label(series: str, label: str) -> str:
    """A label's value in a series' text (``name{a="x",b="y"}``), "?" where it has none."""
    found = re.search(rf'[{{,]{label}="((?:[^"\\]|\\.)*)"', series)
    return found.group(1) if found else "?"


def _has(series: Mapping[str, float], name: str) -> bool:
    return any(key.startswith(name + "{") for key in series)


def _agent_hosts(seen: Observation) -> set[str]:
    """Workers whose `conf` says the celery-vitals agent runs in them."""
    return {
        host
        for host, worker in seen.workers.items()
        if isinstance(worker.conf.get(AGENT_CONF_KEY), str)
    }


def _agent_setup(seen: Observation) -> str:
    """Where the doctor saw the agent setup, as the start of a sentence; "" where not."""
    where = []
    agents = _agent_hosts(seen)
    if agents:
        where.append(f"the celery-vitals agent runs in {names_of(agents)}")
    view, series = seen.exporter, _scraped(seen)
    if view is not None and _has(series, "celery_vitals_agent_info"):
        where.append(f"{view.url} is a worker's agent")
    elif view is not None and series and not _has(series, "celery_vitals_event_stream_up"):
        where.append(f"the exporter at {view.url} runs without the event stream")
    prometheus = seen.prometheus
    if not agents and prometheus is not None and prometheus.agents:
        where.append(f"Prometheus scrapes {len(prometheus.agents)} agents")
    return "; ".join(where)


def _stamp_finding(seen: Observation, agent_setup: str) -> Finding:
    """The agent setup: queue wait, and on Redis and RabbitMQ the oldest waiting message's
    age, come from the publication stamp, not from task-sent events. An agent's /metrics
    (--exporter-url) tells how many received tasks carried it."""
    view, series = seen.exporter, _scraped(seen)
    is_agent = _has(series, "celery_vitals_agent_info")
    unstamped = _total(series, "celery_task_unstamped_total") if is_agent else 0.0
    stamped = _total(series, "celery_task_queue_wait_seconds_count") if is_agent else 0.0
    needed = (
        f"{agent_setup}: task-sent events are not needed; queue wait (and on Redis and "
        "RabbitMQ the oldest waiting message's age) comes from the publication stamp of "
        "publishers that run the agent"
    )
    if view is not None and unstamped:
        queues = {
            f"{_label(key, 'queue_name')} {value:g}"
            for key, value in series.items()
            if key.startswith("celery_task_unstamped_total{") and value
        }
        return Finding(
            "task-sent-events",
            WARN,
            f"{needed}, and {unstamped:g} tasks reached {view.url} without one "
            f"(celery_task_unstamped_total by queue: {names_of(queues)}): their publishers "
            "do not run the agent, so those tasks have no queue wait",
            _STAMP_FIX,
        )
    if view is not None and stamped:
        return Finding(
            "task-sent-events",
            OK,
            f"{needed}: {stamped:g} stamped tasks and none unstamped at {view.url}",
        )
    return Finding(
        "task-sent-events",
        WARN,
        f"{needed}, which the doctor cannot see from here",
        f"{_STAMP_FIX}; celery_task_unstamped_total on the workers' agents counts the tasks "
        "that arrive without it (--exporter-url http://WORKER:9809 has the doctor read it)",
    )


def check_queues(seen: Observation) -> Iterator[Finding]:
    if seen.queues_error is not None:
        yield Finding(
            "queue-consumers",
            FAIL,
            f"polling the queues failed: {seen.queues_error}",
            "check the broker (and --rabbitmq-management-url and its credentials)",
        )
        return
    if not seen.remote_control:
        depths = [f"{name} ({queue.ready or 0})" for name, queue in sorted(seen.queues.items())]
        yield Finding(
            "queue-consumers",
            OK,
            f"queues checked: {len(seen.queues)}, messages waiting: "
            f"{', '.join(depths) or 'none'}; SQS tells no consumers: CeleryQueueNotDraining "
            "watches these queues from the agents' receives",
        )
        return
    consumed = seen.consumed
    orphans = []
    for name, queue in sorted(seen.queues.items()):
        waiting = queue.ready or 0
        if waiting and not consumed.get(name) and not queue.consumers:
            orphans.append(name)
            yield Finding(
                "queue-consumers",
                FAIL,
                f"queue {name}: {waiting} messages waiting and no consumer",
                f"start a worker with -Q {name}, or fix the routing (task_routes, "
                "task_default_queue, the queue name's spelling) that sends tasks "
                "there",
                subject=name,
            )
    if orphans:
        return
    shown = [f"{name} ({', '.join(hosts)})" for name, hosts in sorted(consumed.items())]
    note = ""
    if not seen.config.broker.discovers_queues(seen.config):
        note = "; queues nobody consumes are found only with --rabbitmq-management-url or --queue"
    yield Finding(
        "queue-consumers",
        OK,
        f"queues checked: {len(seen.queues)}; consumed: {', '.join(shown) or 'none'}{note}",
    )


def _visibility_timeout(seen: Observation, worker: WorkerView, default: float) -> float:
    options = worker.conf.get("broker_transport_options")
    for source in (
        options if isinstance(options, dict) else {},
        seen.config.broker_transport_options,
    ):
        value = seconds(source.get("visibility_timeout"))
        if value:
            return value
    return default


def check_visibility(seen: Observation) -> Iterator[Finding]:
    default = seen.config.broker.unacked_redelivery_default
    if default is None:  # only Redis redelivers after visibility_timeout (kombu's option)
        return
    for host, worker in sorted(seen.workers.items()):
        timeout = _visibility_timeout(seen, worker, default)
        late = worker.acks_late_tasks()
        longest = worker.longest(late)
        if not late:
            yield Finding(
                "visibility-timeout",
                OK,
                f"{host}: no acks_late task (visibility_timeout {timeout:g}s)",
                subject=host,
            )
        elif longest is None:
            yield Finding(
                "visibility-timeout",
                WARN,
                f"{host}: {len(late)} acks_late tasks ({names_of(late)}) without a "
                f"time limit: one running past visibility_timeout {timeout:g}s is "
                "delivered again while it still runs",
                f"set task_time_limit below {timeout:g}s, or raise "
                "broker_transport_options visibility_timeout above the longest task",
                subject=host,
            )
        elif longest[0] >= timeout:
            yield Finding(
                "visibility-timeout",
                FAIL,
                f"{host}: task {longest[1]} is acks_late with a {longest[0]:g}s time "
                f"limit, longer than visibility_timeout {timeout:g}s: a run past "
                f"{timeout:g}s is delivered again to another worker while it still "
                "runs",
                f"raise broker_transport_options visibility_timeout above "
                f"{longest[0]:g}s on workers and publishers (or lower the time limit)",
                subject=host,
            )
        else:
            yield Finding(
                "visibility-timeout",
                OK,
                f"{host}: longest acks_late time limit {longest[0]:g}s ({longest[1]}) "
                f"< visibility_timeout {timeout:g}s",
                subject=host,
            )


def check_worker_lost(seen: Observation) -> Iterator[Finding]:
    for host, worker in sorted(seen.workers.items()):
        late = worker.acks_late_tasks()
        requeued = [
            task for task in late if worker.tasks[task].get("reject_on_worker_lost") == "True"
        ]
        if requeued:
            yield Finding(
                "worker-lost-requeue",
                WARN,
                f"{host}: {names_of(requeued)} are acks_late with "
                "reject_on_worker_lost: a task that gets its process killed (OOM) is "
                "requeued and kills the next process too, forever",
                "keep task_reject_on_worker_lost=True only for idempotent tasks that "
                "cannot exhaust memory; bound them with worker_max_memory_per_child",
                subject=host,
            )
        elif late and "task_reject_on_worker_lost" not in worker.conf:
            yield Finding(
                "acks-late-worker-lost",
                WARN,
                f"{host}: {len(late)} acks_late tasks and task_reject_on_worker_lost "
                "not set: a task whose process dies (OOM kill, SIGKILL) is "
                "acknowledged and fails with WorkerLostError instead of running again",
                "set task_reject_on_worker_lost explicitly: False to accept losing "
                "such runs, True to re-run them (idempotent tasks only)",
                subject=host,
            )
        else:
            yield Finding(
                "acks-late-worker-lost",
                OK,
                f"{host}: "
                + ("task_reject_on_worker_lost set explicitly" if late else "no acks_late task"),
                subject=host,
            )


def check_recycling(seen: Observation) -> Iterator[Finding]:
    for host, worker in sorted(seen.workers.items()):
        if worker.pool_name != "prefork":
            yield Finding(
                "recycling",
                OK,
                f"{host}: pool {worker.pool_name} has no child processes to recycle",
                subject=host,
            )
            continue
        per_child = worker.pool.get("max-tasks-per-child")
        memory = worker.conf.get("worker_max_memory_per_child")
        if isinstance(per_child, int) or memory:
            said = [f"worker_max_tasks_per_child={per_child}"] if isinstance(per_child, int) else []
            said += [f"worker_max_memory_per_child={memory}"] if memory else []
            yield Finding("recycling", OK, f"{host}: {', '.join(said)}", subject=host)
        else:
            yield Finding(
                "recycling",
                WARN,
                f"{host}: pool processes are never recycled: a leak grows for days "
                "until the OOM killer ends a process mid-task",
                "set worker_max_tasks_per_child (e.g. 1000) or "
                "worker_max_memory_per_child (KiB, e.g. 512000)",
                subject=host,
            )


def check_prefetch(seen: Observation) -> Iterator[Finding]:
    for host, worker in sorted(seen.workers.items()):
        multiplier = worker.prefetch_multiplier
        longest = worker.longest(worker.tasks)
        if multiplier > 1 and longest is not None and longest[0] >= LONG_TASK:
            yield Finding(
                "prefetch",
                WARN,
                f"{host}: prefetch multiplier {multiplier} with tasks allowed "
                f"{longest[0]:g}s ({longest[1]}): each process holds "
                f"{multiplier - 1} more tasks behind a long one while other workers "
                "may idle",
                "set worker_prefetch_multiplier=1 (with task_acks_late=True) for "
                "workers that run long tasks",
                subject=host,
            )
        else:
            limit = f", longest time limit {longest[0]:g}s" if longest else ""
            yield Finding(
                "prefetch", OK, f"{host}: prefetch multiplier {multiplier}{limit}", subject=host
            )


def check_max_retries(seen: Observation) -> Iterator[Finding]:
    forever = sorted(
        {
            task
            for worker in seen.workers.values()
            for task, fields in worker.tasks.items()
            if "max_retries" not in fields
        }
    )
    if forever:
        yield Finding(
            "max-retries",
            WARN,
            f"{names_of(forever)} retry forever (max_retries=None): a permanent error "
            "becomes an endless retry loop",
            "set max_retries on these tasks",
        )
    elif seen.workers:
        yield Finding("max-retries", OK, "every registered task has a max_retries bound")


def _total(series: Mapping[str, float], name: str) -> float:
    return sum(value for key, value in series.items() if key.startswith(name + "{"))


def check_exporter(seen: Observation) -> Iterator[Finding]:
    view = seen.exporter
    if view is None:
        return
    if view.error is not None:
        yield Finding(
            "exporter",
            FAIL,
            view.error,
            "check --exporter-url: the address of `celery-vitals serve` (port 9808 unless its "
            "--listen-address says otherwise) or of a worker's agent (9809), as reachable from "
            "here, e.g. http://exporter:9808; and that it runs",
        )
        return
    yield Finding("exporter", OK, f"{view.url} /metrics answered")
    after = view.after or view.before
    stream = [
        value for key, value in after.items() if key.startswith("celery_vitals_event_stream_up{")
    ]
    if not stream:
        yield Finding(
            "exporter-stream",
            OK,
            "no event stream (--no-event-stream: the agents own task and worker metrics)",
        )
        return
    if stream[0] != 1:
        yield Finding(
            "exporter-stream",
            FAIL,
            "the exporter's event stream is down (celery_vitals_event_stream_up 0)",
            "see the exporter's log: broker "
            "URL, credentials, or permissions on the celeryev exchange",
        )
    events = _total(after, "celery_vitals_events_total") - _total(
        view.before, "celery_vitals_events_total"
    )
    if seen.workers and events <= 0:
        yield Finding(
            "exporter-events",
            FAIL,
            f"the exporter received no event in "
            f"{seen.listen:g}s although {len(seen.workers)} workers answered",
            "check that the exporter and workers use the same broker and vhost/db",
        )
    elif stream[0] == 1:
        yield Finding("exporter-events", OK, f"{events:g} events in {seen.listen:g}s")
    yield from _exporter_losses(after)


def _exporter_losses(after: Mapping[str, float]) -> Iterator[Finding]:
    evicted = _total(after, "celery_vitals_tracker_evictions_total")
    if evicted:
        yield Finding(
            "exporter-evictions",
            WARN,
            f"{evicted:g} unfinished tasks evicted from the exporter's uuid map",
            "raise --max-tracked-tasks or --max-task-age",
        )
    folded = {
        key: value
        for key, value in after.items()
        if key.startswith("celery_vitals_label_values_folded_total{") and value
    }
    if folded:
        counts = (f"{key[key.index('{') :]} {value:g}" for key, value in folded.items())
        yield Finding(
            "exporter-labels",
            WARN,
            f"label values folded into other: {names_of(counts)}",
            "raise the matching --max-task-names / --max-queue-names / "
            "--max-exception-names / --max-workers / --max-label-length",
        )
    if not evicted and not folded:
        yield Finding("exporter-limits", OK, "no evictions, no folded label values")


def check_beat(seen: Observation) -> Iterator[Finding]:
    """Which celery beat runs is not visible from the broker: with --prometheus-url the
    Prometheus side tells (prometheus.check_beat); an --exporter-url that is the agent
    inside beat tells about that beat."""
    if seen.prometheus is not None:
        return
    view, series = seen.exporter, _scraped(seen)
    beats = [key for key in series if key.startswith("celery_beat_info{")]
    if view is not None and beats:
        entries = sum(key.startswith("celery_beat_entry_interval_seconds{") for key in series)
        yield Finding(
            "beat",
            OK,
            f"{view.url} is celery beat {_label(beats[0], 'hostname')} (scheduler "
            f"{_label(beats[0], 'scheduler')}, {entries} entries); other beats, if any, "
            "are not visible from here",
        )
        return
    yield Finding(
        "beat",
        WARN,
        "celery beat is not visible from the broker: whether none, one or more than one "
        "runs, and with which scheduler, only the agent inside beat tells "
        "(celery_beat_info)",
        "pass --prometheus-url http://prometheus:9090, the Prometheus that scrapes beat's "
        "agent (celery_vitals.agent.install(app) in the app module beat loads), or "
        "--exporter-url http://BEAT:9809 to read that agent itself",
    )


def check_prometheus(seen: Observation) -> Iterator[Finding]:
    """With --prometheus-url: the Prometheus side (prometheus.py)."""
    if seen.prometheus is not None:
        from celery_vitals.doctor.prometheus import diagnose as prometheus_findings

        yield from prometheus_findings(seen.prometheus)


CHECKS: tuple[Check, ...] = (
    check_broker,
    check_persistence,
    check_workers,
    check_task_events,
    check_task_sent,
    check_queues,
    check_visibility,
    check_worker_lost,
    check_recycling,
    check_prefetch,
    check_max_retries,
    check_exporter,
    check_beat,
    check_prometheus,
)


def diagnose(seen: Observation) -> list[Finding]:
    """Every check's findings; a broker that could not be reached is the only one of the
    cluster's (the Prometheus side is checked all the same)."""
    if seen.broker is None:
        return [*check_broker(seen), *check_prometheus(seen)]
    return [finding for check in CHECKS for finding in check(seen)]
