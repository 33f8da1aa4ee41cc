"""The doctor's task-sent check says what applies to the setup it finds: task-sent events
in the event setup; in the agent setup (workers with the agent, an exporter without the
event stream, agents Prometheus scrapes) the publication stamp, which publishers get from
celery_vitals.agent.install(app). Exact texts, per setup."""

from __future__ import annotations

from celery_vitals import AGENT_CONF_KEY
from celery_vitals.brokers.probe import ProbeResult
from celery_vitals.config import Config
from celery_vitals.doctor import ExporterView, Finding, Observation, WorkerView, diagnose
from celery_vitals.doctor.prometheus import PrometheusView, Target

STAMP_FIX = (
    "call celery_vitals.agent.install(app) in every process that publishes tasks (web "
    "servers, scripts, celery beat), not only in the workers: it stamps each task with its "
    "publication time (docs/agent.md, publishers)"
)
NEEDED = (
    "task-sent events are not needed; queue wait (and on Redis and RabbitMQ the oldest "
    "waiting message's age) comes from the publication stamp of publishers that run the agent"
)
AGENT_INFO = 'celery_vitals_agent_info{broker="redis://127.0.0.1:6379/0",hostname="a@h"}'


def observation(*workers: WorkerView, listening: bool = True) -> Observation:
    seen = Observation(
        Config(broker_url="redis://127.0.0.1:6379/0"),
        listen=5.0,
        listening=listening,
        broker=ProbeResult(info={"transport": "redis", "version": "7.0"}),
    )
    seen.workers = {worker.hostname: worker for worker in workers}
    return seen


def agent_worker(host: str = "a@h") -> WorkerView:
    return WorkerView(host, conf={AGENT_CONF_KEY: "0.0.0.0:9809"}, queues=("celery",))


def plain_worker(host: str = "e@h") -> WorkerView:
    return WorkerView(host, conf={"worker_send_task_events": True}, queues=("celery",))


def task_sent(seen: Observation) -> list[tuple[str, str, str]]:
    return [
        (f.status, f.detail, f.fix)
        for f in diagnose(seen)
        if isinstance(f, Finding) and f.check == "task-sent-events"
    ]


# -- the event setup: as before ------------------------------------------------------------


def test_event_setup_with_task_sent_events_is_ok() -> None:
    seen = observation(plain_worker())
    seen.events.sent, seen.events.received = 12, 12
    seen.events.task_events["e@h"] = 36
    assert task_sent(seen) == [("ok", "12 task-sent events in 5s", "")]


def test_event_setup_without_task_sent_events_asks_for_them() -> None:
    seen = observation(plain_worker())
    seen.events.received = 7
    seen.events.task_events["e@h"] = 21
    assert task_sent(seen) == [
        (
            "warn",
            "7 tasks received in 5s and no task-sent event: publishers do not send them, so "
            "queue attribution and queue wait are missing",
            "set task_send_sent_event=True in the Celery config of every publisher",
        )
    ]


# -- the agent setup: the stamp, never task_send_sent_event --------------------------------


def test_workers_with_the_agent_ask_for_the_stamp_not_for_task_sent_events() -> None:
    """What the doctor sees without an agent's /metrics: the setup, not the stamps."""
    seen = observation(agent_worker("a@h"), agent_worker("b@h"))
    seen.events.sent = 4  # a publisher sends task-sent events: the agents do not use them
    assert task_sent(seen) == [
        (
            "warn",
            f"the celery-vitals agent runs in a@h, b@h: {NEEDED}, which the doctor cannot "
            "see from here",
            f"{STAMP_FIX}; celery_task_unstamped_total on the workers' agents counts the tasks "
            "that arrive without it (--exporter-url http://WORKER:9809 has the doctor read it)",
        )
    ]
    assert "task_send_sent_event" not in str(task_sent(seen))


def test_an_idle_agent_setup_is_not_told_to_publish_while_listening() -> None:
    seen = observation(agent_worker())
    [(status, detail, fix)] = task_sent(seen)
    assert status == "warn" and detail.startswith("the celery-vitals agent runs in a@h: ")
    assert fix.startswith(STAMP_FIX) and "--listen" not in fix


def test_an_agents_metrics_with_unstamped_tasks_name_their_queues() -> None:
    seen = observation(agent_worker())
    seen.exporter = ExporterView(
        "http://a:9809",
        after={
            AGENT_INFO: 1,
            'celery_task_unstamped_total{broker="b",queue_name="web"}': 3,
            'celery_task_unstamped_total{broker="b",queue_name="celery"}': 0,
            'celery_task_queue_wait_seconds_count{broker="b",name="t",queue_name="celery"}': 9,
        },
    )
    assert task_sent(seen) == [
        (
            "warn",
            "the celery-vitals agent runs in a@h; http://a:9809 is a worker's agent: "
            f"{NEEDED}, and 3 tasks reached http://a:9809 without one "
            "(celery_task_unstamped_total by queue: web 3): their publishers do not run the "
            "agent, so those tasks have no queue wait",
            STAMP_FIX,
        )
    ]


def test_an_agents_metrics_with_stamped_tasks_only_is_ok() -> None:
    seen = observation(agent_worker())
    seen.exporter = ExporterView(
        "http://a:9809",
        after={
            AGENT_INFO: 1,
            'celery_task_queue_wait_seconds_count{broker="b",name="t",queue_name="celery"}': 9,
            'celery_task_queue_wait_seconds_count{broker="b",name="u",queue_name="celery"}': 2,
        },
    )
    assert task_sent(seen) == [
        (
            "ok",
            "the celery-vitals agent runs in a@h; http://a:9809 is a worker's agent: "
            f"{NEEDED}: 11 stamped tasks and none unstamped at http://a:9809",
            "",
        )
    ]


def test_an_exporter_without_the_event_stream_is_the_agent_setup() -> None:
    """--exporter-url of `serve --no-event-stream`; the workers do not tell (no agent key)."""
    seen = observation(WorkerView("w@h", queues=("celery",)))
    seen.exporter = ExporterView(
        "http://exporter:9808",
        after={'celery_queue_length{broker="b",queue_name="celery"}': 0},
    )
    [(status, detail, fix)] = task_sent(seen)
    assert (status, detail) == (
        "warn",
        f"the exporter at http://exporter:9808 runs without the event stream: {NEEDED}, "
        "which the doctor cannot see from here",
    )
    assert fix.startswith(STAMP_FIX)


def test_agents_found_by_prometheus_without_the_event_stream() -> None:
    """No event stream to listen to (as on SQS): Prometheus knows the agents."""
    seen = observation(listening=False)
    seen.prometheus = PrometheusView(
        "http://prometheus:9090",
        agents={
            Target("workers", "10.0.0.1:9809"): ("sqs://eu-west-1/", "a@h"),
            Target("workers", "10.0.0.2:9809"): ("sqs://eu-west-1/", "b@h"),
        },
    )
    [(status, detail, _)] = task_sent(seen)
    assert (status, detail) == (
        "warn",
        f"Prometheus scrapes 2 agents: {NEEDED}, which the doctor cannot see from here",
    )


def test_a_mixed_fleet_gets_both_findings() -> None:
    """A worker with the agent and one sending task events without it: the stamp serves
    the first, task-sent events the second."""
    seen = observation(agent_worker("a@h"), plain_worker("e@h"))
    seen.events.received = 5
    seen.events.task_events["e@h"] = 15
    found = task_sent(seen)
    assert [status for status, _, _ in found] == ["warn", "warn"]
    assert found[0][1].startswith("the celery-vitals agent runs in a@h: ")
    assert found[1][2] == "set task_send_sent_event=True in the Celery config of every publisher"
