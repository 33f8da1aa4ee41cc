"""``celery-vitals doctor`` on real workers, on Redis and on RabbitMQ.

Per broker, two clusters run side by side (tests/support/doctor_app.py):

- wrong: worker ``quiet`` without -E (and no `serve` to turn events on), worker ``loud``
  with -E, a publisher without task_send_sent_event, visibility_timeout=30 with a 60 s
  time limit and acks_late, no child recycling, prefetch multiplier 4, a task with
  max_retries=None, three messages in a queue nobody consumes and (Redis) no persistence;
- right: the same tasks configured well, publishers with task-sent events, Redis with AOF
  (and, on Redis, a `celery-vitals serve` the doctor checks with --exporter-url).

The doctor runs four times at once per broker (each cluster, text and --json) while
tasks are published, so the whole set costs one listen window per broker.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stack.net import LOOPBACK
from stack.processes import REPO_ROOT, venv_executable
from stack.rabbitmq import RabbitMQServer
from tests.support.dlq_cli import env
from tests.support.doctor_app import make_app
from tests.support.harness import Harness

pytestmark = pytest.mark.integration

APP = "tests.support.doctor_app"
LISTEN = "4"
WRONG = {"DOCTOR_SETUP": "wrong"}
RIGHT = {"DOCTOR_SETUP": "right"}

Key = tuple[str, str, str | None]  # (check, status, subject)


def doctor(broker_url: str, *args: str) -> subprocess.Popen[str]:
    """The doctor as a user runs it: broker URL from the environment."""
    return subprocess.Popen(
        [venv_executable("celery-vitals"), "doctor", "--listen", LISTEN, "--timeout", "3", *args],
        env=env(broker_url),
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the doctor did not finish in {timeout}s:\n{out}\n{err}") from None
    return process.returncode, out, err


_LINE = re.compile(r"^(OK|WARN|FAIL)\s+(\S+)\s+(.*)$")


def text_keys(output: str) -> list[tuple[str, str, str]]:
    """(check, status, detail) of each text line."""
    found = []
    for line in output.splitlines():
        match = _LINE.match(line)
        assert match, f"not a report line: {line!r}"
        found.append((match.group(2), match.group(1).lower(), match.group(3)))
    return found


def keys(findings: list[dict[str, Any]]) -> list[Key]:
    return sorted((f["check"], f["status"], f.get("subject")) for f in findings)


def detail(findings: list[dict[str, Any]], check: str, subject: str | None = None) -> str:
    [found] = [f for f in findings if f["check"] == check and f.get("subject") == subject]
    return str(found["detail"])


def per_worker(check: str, status: str, *hosts: str) -> list[Key]:
    return [(check, status, host) for host in hosts]


def expected_wrong(transport: str) -> list[Key]:
    quiet, loud = "quiet@test", "loud@test"
    both = (quiet, loud)
    found: list[Key] = [
        ("broker", "ok", None),
        ("broker-persistence", "warn" if transport == "redis" else "ok", None),
        *per_worker("workers", "ok", *both),
        ("task-events", "fail", quiet),
        ("task-events", "ok", loud),
        ("task-sent-events", "warn", None),
        ("queue-consumers", "fail", "orphans"),
        *per_worker("acks-late-worker-lost", "warn", *both),
        *per_worker("recycling", "warn", *both),
        *per_worker("prefetch", "warn", *both),
        ("max-retries", "warn", None),
        ("beat", "warn", None),  # no --prometheus-url: celery beat cannot be seen
    ]
    if transport == "redis":
        found += per_worker("visibility-timeout", "fail", *both)
    return sorted(found)


def expected_right(transport: str) -> list[Key]:
    host = "right@test"
    checks = ["workers", "task-events", "acks-late-worker-lost", "recycling", "prefetch"]
    if transport == "redis":
        checks.append("visibility-timeout")
    found: list[Key] = [(check, "ok", host) for check in checks]
    found.append(("beat", "warn", None))  # no --prometheus-url: celery beat cannot be seen
    found += [
        (check, "ok", None)
        for check in (
            "broker",
            "broker-persistence",
            "task-sent-events",
            "queue-consumers",
            "max-retries",
        )
    ]
    if transport == "redis":  # with --exporter-url: a `serve` on the right cluster
        found += [
            (check, "ok", None) for check in ("exporter", "exporter-events", "exporter-limits")
        ]
    return sorted(found)


@pytest.fixture(params=["redis", "amqp"])
def clusters(
    request: pytest.FixtureRequest, harness: Harness
) -> Iterator[tuple[str, str, str, tuple[str, ...]]]:
    """(transport, wrong broker URL, right broker URL, extra doctor options)."""
    if request.param == "redis":
        wrong, right = harness.redis("wrong"), harness.redis("right")
        redis.Redis(port=right.port).config_set("appendonly", "yes")
        yield "redis", wrong.url(), right.url(), ()
        return
    rabbit: RabbitMQServer = request.getfixturevalue("rabbit")
    yield (
        "amqp",
        rabbit.vhost("doctor-wrong"),
        rabbit.vhost("doctor-right"),
        ("--rabbitmq-management-url", rabbit.management_url),
    )


@pytest.mark.timeout(180)
def test_doctor_names_each_problem(
    harness: Harness, clusters: tuple[str, str, str, tuple[str, ...]]
) -> None:
    transport, wrong_url, right_url, extra = clusters
    harness.worker(
        "quiet",
        wrong_url,
        exporter=None,
        task_events=False,
        app=APP,
        queues="quiet",
        extra_env=WRONG,
    )
    harness.worker("loud", wrong_url, exporter=None, app=APP, queues="loud", extra_env=WRONG)
    harness.worker("right", right_url, exporter=None, app=APP, queues="celery", extra_env=RIGHT)
    wrong_client = make_app(wrong_url, sent_events=False)
    right_client = make_app(right_url, sent_events=True)
    try:
        for _ in range(3):
            wrong_client.send_task("doctor.add", args=(1, 2), queue="orphans")
        served: tuple[str, ...] = ()
        if transport == "redis":
            exporter = harness.exporter(right_url)
            # as users type it: host:port, http:// assumed
            served = ("--exporter-url", f"{LOOPBACK}:{exporter.port}")
        runs = {
            (setup, form): doctor(
                url,
                *extra,
                *(served if setup == "right" else ()),
                *(["--json"] if form == "json" else []),
            )
            for setup, url in (("wrong", wrong_url), ("right", right_url))
            for form in ("text", "json")
        }
        while any(run.poll() is None for run in runs.values()):
            wrong_client.send_task("doctor.add", args=(1, 2), queue="quiet")
            wrong_client.send_task("doctor.add", args=(1, 2), queue="loud")
            right_client.send_task("doctor.add", args=(1, 2), queue="celery")
            time.sleep(0.2)
        results = {key: finish(run) for key, run in runs.items()}
    finally:
        wrong_client.close()
        right_client.close()

    for (setup, form), (code, out, err) in results.items():
        assert code == (1 if setup == "wrong" else 0), f"{setup} {form}: {out}\n{err}"
        assert "Traceback" not in err, err
        assert "guest:guest" not in out + err
    wrong = json.loads(results["wrong", "json"][1])
    right = json.loads(results["right", "json"][1])
    assert keys(wrong) == expected_wrong(transport), json.dumps(wrong, indent=1)
    assert keys(right) == expected_right(transport), json.dumps(right, indent=1)

    # the text report has the same findings, one line each
    for setup, findings in (("wrong", wrong), ("right", right)):
        lines = text_keys(results[setup, "text"][1])
        assert sorted((c, s) for c, s, _ in lines) == sorted(
            (f["check"], f["status"]) for f in findings
        ), results[setup, "text"][1]

    # what each finding says it saw
    assert (
        detail(wrong, "queue-consumers", "orphans")
        == "queue orphans: 3 messages waiting and no consumer"
    )
    assert "finished" in detail(wrong, "task-events", "quiet@test")
    assert "sent no task event" in detail(wrong, "task-events", "quiet@test")
    assert "no task-sent event" in detail(wrong, "task-sent-events")
    assert detail(wrong, "max-retries").startswith("doctor.flaky retry forever")
    assert "prefetch multiplier 4 with tasks allowed 60s" in detail(wrong, "prefetch", "loud@test")
    assert "celery 5." in detail(wrong, "workers", "loud@test")
    assert "pool prefork x2" in detail(wrong, "workers", "loud@test")
    if transport == "redis":
        assert "60s time limit, longer than visibility_timeout 30s" in detail(
            wrong, "visibility-timeout", "quiet@test"
        )
        assert "no persistence" in detail(wrong, "broker-persistence")
        assert detail(right, "broker-persistence") == "Redis persists to disk (aof)"
    else:
        assert detail(right, "broker-persistence") == "every consumed queue is durable"
    assert detail(right, "recycling", "right@test") == "right@test: worker_max_tasks_per_child=100"
    fixes = {f["check"]: f["fix"] for f in wrong}
    assert "task_send_sent_event=True" in fixes["task-sent-events"]
    assert "-E" in fixes["task-events"]
    assert "worker_max_tasks_per_child" in fixes["recycling"]


def test_a_worker_with_the_agent_needs_no_task_events(harness: Harness) -> None:
    url = harness.redis().url()
    worker = harness.agent_worker("agent", url)
    harness.wait_answering(worker, url)
    client = make_app(url, sent_events=False)
    try:
        run = doctor(url, "--json")
        while run.poll() is None:
            client.send_task("agent.add", args=(1, 2))
            time.sleep(0.2)
        code, out, err = finish(run)
    finally:
        client.close()
    findings = json.loads(out)
    assert code == 0, out
    assert detail(findings, "task-events", worker.hostname) == (
        f"{worker.hostname}: task events off, and not needed: the celery-vitals agent runs "
        f"in it (on 127.0.0.1:{worker.port})"
    )
    assert "task-events" not in {f["check"] for f in findings if f["status"] != "ok"}, out
    assert "Traceback" not in err


def test_the_agent_setup_is_told_to_stamp_its_publishers(harness: Harness) -> None:
    """A worker with the agent, a publisher without it (no stamp, no task-sent events):
    the doctor reads the agent's /metrics (--exporter-url), names the unstamped tasks and
    asks for celery_vitals.agent.install(app) in the publishers, not task_send_sent_event."""
    url = harness.redis().url()
    worker = harness.agent_worker("agent", url)
    harness.wait_answering(worker, url)
    agent_url = f"http://{LOOPBACK}:{worker.port}"
    client = make_app(url, sent_events=False)
    try:
        run = doctor(url, "--json", "--exporter-url", agent_url)
        while run.poll() is None:
            client.send_task("agent.add", args=(1, 2))
            time.sleep(0.2)
        code, out, err = finish(run)
    finally:
        client.close()
    assert code == 0, out + err
    [found] = [f for f in json.loads(out) if f["check"] == "task-sent-events"]
    said = re.fullmatch(
        rf"the celery-vitals agent runs in {re.escape(worker.hostname)}; "
        rf"{re.escape(agent_url)} is a worker's agent: task-sent events are not needed; "
        r"queue wait \(and on Redis and RabbitMQ the oldest waiting message's age\) comes "
        r"from the publication stamp of publishers that run the agent, and "
        rf"(\d+) tasks reached {re.escape(agent_url)} "
        r"without one \(celery_task_unstamped_total by queue: celery (\d+)\): their "
        "publishers do not run the agent, so those tasks have no queue wait",
        found["detail"],
    )
    assert found["status"] == "warn" and said is not None, found
    counted = worker.scrape().get("celery_task_unstamped_total", queue_name="celery")
    assert said.group(1) == said.group(2) and 0 < int(said.group(1)) <= (counted or 0)
    assert found["fix"] == (
        "call celery_vitals.agent.install(app) in every process that publishes tasks (web "
        "servers, scripts, celery beat), not only in the workers: it stamps each task with "
        "its publication time (docs/agent.md, publishers)"
    )


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@127.0.0.1:1/0", "amqp://user:s3cret@127.0.0.1:1//"]
)
def test_broker_down_is_one_failure(url: str) -> None:
    for args in ((), ("--json",)):
        code, out, err = finish(doctor(url, *args), timeout=30)
        assert code == 1, out + err
        assert "Traceback" not in err and "s3cret" not in out + err
        if args:
            [finding] = json.loads(out)
            assert (finding["check"], finding["status"]) == ("broker", "fail")
            assert finding["detail"].startswith("cannot reach the broker at ")
            assert ":***@127.0.0.1:1" in finding["detail"]
        else:
            [line] = out.splitlines()
            assert line.startswith("FAIL  broker ")


def test_bad_options_exit_2() -> None:
    code, out, err = finish(doctor("redis://127.0.0.1:1/0", "--timeout", "0"), timeout=30)
    assert code == 2 and "--timeout" in err and not out


def test_declared_queues_are_exclusive_on_rabbitmq(rabbit: RabbitMQServer) -> None:
    """RabbitMQ 4 refuses transient queues that are not exclusive: the event queue and the
    broadcast reply queue of the exporter and the doctor (service.celery_app, EventStream)
    are exclusive, as the broker itself reports them."""
    from celery_vitals.config import build
    from celery_vitals.control import celery_app
    from celery_vitals.stream import EventStream

    vhost = "exclusive"
    app = celery_app(build({"broker_url": rabbit.vhost(vhost)}))
    stream = EventStream(app, print, lambda: None, print, queue_ttl=5, queue_expires=60)
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            app.control.mailbox.reply_queue(channel).declare()
            stream._queue(connection).bind(channel).declare()
            listed = rabbit.api(
                "GET", f"queues/{vhost}?columns=name,exclusive,durable,auto_delete,arguments"
            )
            assert isinstance(listed, list)
            shapes = sorted(
                (
                    q["name"].split(".", 1)[0] == "celeryev",
                    q["exclusive"],
                    q["durable"],
                    q["auto_delete"],
                )
                for q in listed
            )
            assert shapes == [(False, True, False, True), (True, True, False, True)], listed
            assert app.control.inspect(timeout=0.5).ping() is None  # replies collected, none
    finally:
        app.close()
