"""Amazon SQS: the exporter polls moto's SQS server; real Celery workers on sqs:// run the agent.

Each test makes queues of its own names (one moto server for the module); the restart
test comes last, as moto forgets every queue when it restarts.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import boto3
import pytest

from stack.moto import MotoServer
from stack.net import LOOPBACK, wait_until
from stack.processes import REPO_ROOT, venv_executable
from tests.support import dlq_cli
from tests.support.harness import Harness
from tests.support.metrics import Scrape
from tests.support.processes import ExporterProcess

pytestmark = pytest.mark.integration

KEY = "AKIDCELERYVITALSTEST"
SECRET = "FAKE-SECRET-9b1e2c/celery+vitals"  # recognisable; "/" and "+" need URL-encoding
URL_SECRET = SECRET.replace("/", "%2F").replace("+", "%2B")
POLL = ("--queue-poll-interval", "0.5", "--broker-transport-option", "region=us-east-1")


def broker_url(moto: MotoServer) -> str:
    return moto.broker_url(KEY, URL_SECRET)


def sqs(moto: MotoServer) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=moto.endpoint,
        region_name=moto.REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def make_queue(moto: MotoServer, name: str, **attributes: str) -> str:
    return str(sqs(moto).create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def with_dlq(moto: MotoServer, name: str, *, receives: int, visibility: int) -> str:
    """A queue whose redrive policy moves a message to ``<name>-dead`` after ``receives``."""
    dead = make_queue(moto, f"{name}-dead")
    arn = sqs(moto).get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
    policy = {
        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
        "maxReceiveCount": str(receives),
    }
    return make_queue(
        moto, name, VisibilityTimeout=str(visibility), RedrivePolicy=json.dumps(policy)
    )


def assert_no_secret(exporter: ExporterProcess, *scrapes: Scrape) -> None:
    for text in (exporter.output(), *(s.text for s in scrapes), exporter.get("/readyz").text):
        assert SECRET not in text and URL_SECRET not in text


def test_depth_in_flight_and_delayed_with_agent_workers(harness: Harness, moto: MotoServer) -> None:
    idle, slow = unique("idle") + ".low", unique("slow")  # SQS names idle: "idle-…-low"
    make_queue(moto, slow, VisibilityTimeout="900")  # the queue's own attribute counts
    url = broker_url(moto)
    client = harness.client(url)
    client.conf.broker_transport_options = {"region": "us-east-1"}
    for _ in range(5):
        client.send_task("agent.add", args=(1, 1), queue=idle)  # nobody consumes it
    for _ in range(2):
        client.send_task("agent.add", args=(2, 2), queue=idle, delay_seconds=600)
    for _ in range(3):
        client.send_task("agent.late_sleep", args=(60,), queue=slow)
    # slow is found with ListQueues; idle too, as "idle-…-low", and reported once, as named
    exporter = harness.exporter(url, *POLL, "--queue-discovery-interval", "1", "--queue", idle)
    worker = harness.agent_worker("sqs1", url, queues=slow)  # -c 2, prefetch multiplier 1

    def settled(s: Scrape) -> bool:
        return (
            s.get("celery_queue_length", queue_name=idle) == 5
            and s.get("celery_queue_delayed", queue_name=idle) == 2
            and s.get("celery_queue_unacked", queue_name=slow) == 2
            and s.get("celery_queue_length", queue_name=slow) == 1
        )

    s = exporter.wait_for(settled, timeout=45, what="idle 5 + 2 delayed, slow 2 in flight + 1")
    assert s.get("celery_queue_unacked", queue_name=idle) == 0
    assert s.get("celery_queue_delayed", queue_name=slow) == 0
    assert s.get("celery_queue_visibility_timeout_seconds", queue_name=slow) == 900
    # the client created "idle" with kombu's default visibility_timeout option
    assert s.get("celery_queue_visibility_timeout_seconds", queue_name=idle) == 1800
    assert s.get("celery_queue_exists", queue_name=idle) == 1
    assert s.get("celery_queue_exists", queue_name=idle.replace(".", "-")) is None
    assert s.get("celery_broker_up") == 1
    assert s.get("celery_broker_info", transport="sqs", version="", eviction_policy="") == 1
    assert s.series("celery_vitals_event_stream_up") == {}  # no event stream on SQS
    assert s.series("celery_vitals_enable_events_requests_total") == {}
    assert exporter.get("/readyz").status == 200
    assert exporter.output().count("SQS broker: no event stream") == 1
    # the agent counts what the exporter cannot see on SQS, under the same queue_name
    agent = worker.wait_for(
        lambda a: a.get("celery_task_started_total", name="agent.late_sleep", queue_name=slow) == 2,
        what="two late_sleep tasks started by the agent",
    )
    assert agent.get("celery_task_received_total", name="agent.late_sleep", queue_name=slow) == 2
    assert_no_secret(exporter, s)


def test_redrive_policy_dead_letters_a_rejected_task(harness: Harness, moto: MotoServer) -> None:
    flaky = unique("flaky")
    with_dlq(moto, flaky, receives=2, visibility=1)
    url = broker_url(moto)
    exporter = harness.exporter(url, *POLL, "--queue", flaky)
    s = exporter.wait_for(
        lambda s: s.get("celery_dlq_length", queue_name=f"{flaky}-dead") == 0,
        timeout=20,
        what="the DLQ found from the redrive policy",
    )
    assert s.get("celery_queue_max_receives", queue_name=flaky) == 2
    assert s.get("celery_queue_length", queue_name=f"{flaky}-dead") is None  # a DLQ, not a queue
    worker = harness.agent_worker("sqs2", url, queues=flaky)
    client = harness.client(url)
    client.conf.broker_transport_options = {"region": "us-east-1"}
    client.send_task("agent.reject", queue=flaky)

    def dead_lettered(s: Scrape) -> bool:
        return (
            s.get("celery_dlq_length", queue_name=f"{flaky}-dead") == 1
            and s.get("celery_queue_length", queue_name=flaky) == 0
            and s.get("celery_queue_unacked", queue_name=flaky) == 0
        )

    s = exporter.wait_for(dead_lettered, timeout=45, what="the rejected task in the DLQ")
    assert s.get("celery_dlq_ingress_total", queue_name=f"{flaky}-dead") == 1
    # received (and rejected) maxReceiveCount times before SQS moved it
    agent = worker.wait_for(
        lambda a: (
            a.get(
                "celery_task_rejected_total", name="agent.reject", queue_name=flaky, requeue="false"
            )
            == 2
        ),
        what="two rejections counted by the agent",
    )
    assert agent.get("celery_task_received_total", name="agent.reject", queue_name=flaky) == 2
    assert_no_secret(exporter, s)


def test_dlq_list_and_show_read_without_deleting(harness: Harness, moto: MotoServer) -> None:
    orders = unique("orders")
    source = with_dlq(moto, orders, receives=1, visibility=0)
    dead = f"{orders}-dead"
    url = broker_url(moto)
    client = harness.client(url)
    client.conf.broker_transport_options = {"region": "us-east-1"}
    ids = {client.send_task("agent.add", args=(i, i), queue=orders).id for i in range(3)}
    ids.add(client.send_task("agent.fail", queue=dead).id)  # put there by hand
    for _ in range(3):  # one receive each (maxReceiveCount 1), then SQS moves them on
        assert sqs(moto).receive_message(QueueUrl=source, MaxNumberOfMessages=10)
    assert not sqs(moto).receive_message(QueueUrl=source, MaxNumberOfMessages=10).get("Messages")
    options = {"CELERY_VITALS_BROKER_TRANSPORT_OPTION": "region=us-east-1"}

    listed = dlq_cli.run_json(url, "list", **options)  # found from the redrive policies
    (summary,) = [s for s in listed if s["queue"] == dead]  # (and earlier tests' DLQs)
    assert (summary["queue"], summary["depth"], summary["sampled"]) == (dead, 4, False)
    assert summary["tasks"] == {"agent.add": 3, "agent.fail": 1}
    shown = dlq_cli.run_json(url, "show", dead, "--limit", "10", **options)
    assert {entry["id"] for entry in shown} == ids
    assert {entry["task"] for entry in shown} == {"agent.add", "agent.fail"}
    # (origin: AWS's DeadLetterQueueSourceArn attribute, which moto does not set)
    for command in (("replay", dead), ("purge", dead, "--yes")):
        done = dlq_cli.run(url, *command, **options)
        assert done.returncode == 1
        assert "start-message-move-task" in done.stderr and SECRET not in done.stderr
    attributes = sqs(moto).get_queue_attributes(
        QueueUrl=sqs(moto).get_queue_url(QueueName=dead)["QueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    # every message still there, and visible again at once
    assert attributes["ApproximateNumberOfMessages"] == "4"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_reader_killed_half_way_loses_no_message(harness: Harness, moto: MotoServer) -> None:
    dead = unique("killed-dead")
    url_of = make_queue(moto, dead)
    client = sqs(moto)
    for batch in range(100):
        client.send_message_batch(
            QueueUrl=url_of,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"n": batch * 10 + i})} for i in range(10)
            ],
        )
    reader = dlq_cli.spawn(
        broker_url(moto),
        harness.directory,
        "dlq-list",
        "list",
        dead,
        "--broker-transport-option",
        "region=us-east-1",
    )

    def counts() -> tuple[int, int]:
        attributes = client.get_queue_attributes(QueueUrl=url_of, AttributeNames=["All"])
        a = attributes["Attributes"]
        return (
            int(a["ApproximateNumberOfMessages"]),
            int(a["ApproximateNumberOfMessagesNotVisible"]),
        )

    try:
        wait_until(
            lambda: counts()[1] > 0 or not reader.running,
            timeout=30,
            what="the reader to receive a batch",
            details=reader.tail,
            interval=0.005,
        )
        reader.kill()  # SIGKILL in the middle of its read
    finally:
        reader.stop()
    # The server may still be answering the killed reader's ReceiveMessage, and
    # it counts visible and hidden messages one after the other: a reading taken
    # mid-receive can count one message twice. Read until two readings agree.
    readings = [counts()]

    def settled() -> bool:
        readings.append(counts())
        return readings[-1] == readings[-2]

    wait_until(
        settled,
        timeout=20,
        what="the queue's counts to settle",
        details=lambda: str(readings[-5:]),
        interval=0.2,
    )
    visible, hidden = readings[-1]
    assert reader.returncode == -9, reader.tail()  # it was killed, it did not finish
    assert visible + hidden == 1000  # nothing deleted
    assert hidden <= 10  # only the batch in hand: SQS shows it again after 60 s


def test_doctor_on_sqs_checks_what_sqs_can_tell(harness: Harness, moto: MotoServer) -> None:
    """No remote control and no events on SQS: the doctor says so once (a warning, not a
    failure), checks the queues without calling a queue with messages unconsumed (SQS
    tells no consumers) and checks a worker's agent given as --exporter-url."""
    waiting, served = unique("waiting"), unique("served")
    url = broker_url(moto)
    client = harness.client(url)
    client.conf.broker_transport_options = {"region": "us-east-1"}
    for _ in range(3):
        client.send_task("agent.add", args=(1, 1), queue=waiting)
    worker = harness.agent_worker("doc1", url, queues=served)
    result = subprocess.run(
        [
            venv_executable("celery-vitals"),
            "doctor",
            "--json",
            "--queue",
            waiting,
            "--broker-transport-option",
            "region=us-east-1",
            "--exporter-url",
            f"http://{LOOPBACK}:{worker.port}",
        ],
        env=dlq_cli.env(url),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert URL_SECRET not in result.stdout + result.stderr
    assert "event stream" not in result.stderr  # none was consumed
    findings = {f["check"]: f for f in json.loads(result.stdout)}
    assert {check: f["status"] for check, f in findings.items()} == {
        "broker": "ok",
        "broker-persistence": "ok",
        "workers": "warn",
        "queue-consumers": "ok",
        "exporter": "ok",
        "exporter-stream": "ok",
        "beat": "warn",  # no --prometheus-url: celery beat cannot be seen
        "task-sent-events": "warn",  # the agent counted no task: stamps unseen
    }
    assert findings["workers"]["detail"].startswith("SQS has no remote control and no events")
    assert "celery_vitals.agent.install(app)" in findings["workers"]["fix"]
    assert findings["task-sent-events"]["detail"] == (
        f"http://{LOOPBACK}:{worker.port} is a worker's agent: task-sent events are not "
        "needed; queue wait (and on Redis and RabbitMQ the oldest waiting message's age) "
        "comes from the publication stamp of publishers that run the agent, which the "
        "doctor cannot see from here"
    )
    # both queues (ListQueues finds the other tests' queues too: one moto server)
    detail = findings["queue-consumers"]["detail"]
    assert f"{waiting} (3)" in detail and f"{served} (0)" in detail, detail
    assert detail.endswith(
        "SQS tells no consumers: CeleryQueueNotDraining watches these "
        "queues from the agents' receives"
    )


def test_the_exporter_survives_the_servers_restart(harness: Harness, moto: MotoServer) -> None:
    jobs = unique("jobs")
    make_queue(moto, jobs)
    url = broker_url(moto)
    exporter = harness.exporter(url, *POLL, "--queue", jobs, "--probe-timeout", "3")
    exporter.wait_for(
        lambda s: s.get("celery_queue_length", queue_name=jobs) == 0,
        timeout=20,
        what=f"{jobs} polled",
    )
    moto.stop()
    exporter.wait_unready(timeout=20)  # /readyz follows the polls
    s = exporter.scrape()
    assert s.get("celery_broker_up") == 0
    errors = sum(s.series("celery_broker_probe_errors_total").values())
    assert errors >= 1
    moto.start()  # same port, and no queues: moto keeps nothing
    s = exporter.wait_for(
        lambda s: s.get("celery_queue_exists", queue_name=jobs) == 0,
        timeout=20,
        what=f"{jobs} gone after the restart",
    )
    assert exporter.get("/readyz").status == 200
    url_of = make_queue(moto, jobs)
    for _ in range(3):
        sqs(moto).send_message(QueueUrl=url_of, MessageBody="{}")
    s = exporter.wait_for(
        lambda s: s.get("celery_queue_length", queue_name=jobs) == 3,
        timeout=20,
        what=f"{jobs}=3 after the restart",
    )
    assert s.get("celery_broker_up") == 1
    assert "queue poll failed" in exporter.output()  # said why, without the secret
    assert_no_secret(exporter, s)
