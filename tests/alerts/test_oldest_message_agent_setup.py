"""CeleryQueueOldestMessageTooOld in the agent setup: no task events anywhere, the age from
the publication stamp the exporter reads at the queue's head.

A real Prometheus scrapes `celery-vitals serve --no-event-stream` and a worker running the
agent, with the shipped rules (windows shortened as in test_agent_setup). The worker
takes a task from the queue (so the queue is not one that never drains: that incident is
CeleryQueueNotDraining's), stops consuming it, and a task published two hours ago (its
stamp says so, as a publisher with the agent writes it) waits there: the alert's
expression returns the queue, at both severities, and nothing was consumed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis

from celery_vitals.brokers import identity
from celery_vitals.stamp import HEADER
from stack.net import LOOPBACK, wait_until
from stack.prometheus import PrometheusServer
from tests.support.expressions import Expressions, labels, shortened
from tests.support.harness import Harness
from tests.support.rules import RULES_PATH

pytestmark = pytest.mark.integration

QUEUE = "celery"


def test_an_old_stamped_message_pages_without_task_events(harness: Harness, tmp_path: Path) -> None:
    rules_path = tmp_path / "celery-vitals.rules.yml"
    rules_path.write_text(shortened(RULES_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    redis = harness.redis()
    url = redis.url()
    broker = identity(url)
    exporter = harness.exporter(
        url, "--no-event-stream", "--queue", QUEUE, "--queue-poll-interval", "1"
    )
    worker = harness.agent_worker("oldest", url, concurrency=1)
    targets = {
        "celery-exporter": [f"{LOOPBACK}:{exporter.port}"],
        "workers": [f"{LOOPBACK}:{worker.port}"],
    }
    B = f'broker="{broker}"'
    with PrometheusServer(tmp_path / "prometheus", targets, [rules_path]) as prometheus:
        for job in targets:
            prometheus.wait_scraped(job)
        prometheus.wait_rules_evaluated()
        expressions = Expressions(prometheus, rules_path)
        client = harness.client(url)
        client.conf.task_send_sent_event = False  # no task events at all
        client.send_task("agent.add", args=(1, 1))
        prometheus.wait_nonempty(
            f"celery_task_received_total{{{B}}} == 1", timeout=30, what="a task received"
        )
        replies = client.control.cancel_consumer(
            QUEUE, destination=[worker.hostname], reply=True, timeout=10
        )
        assert replies, "the worker did not answer cancel_consumer"
        # a BRPOP sent before the cancel could still take the next message: wait until no
        # client is blocked in one (the worker has no queue left to send another for)
        with Redis(port=redis.port) as admin:
            wait_until(
                lambda: not any("b" in client["flags"] for client in admin.client_list()),
                timeout=10,
                what="no client blocked in BRPOP",
            )
        published = time.time() - 7200
        client.send_task("agent.add", args=(2, 2), headers={HEADER: published})
        for severity in ("warning", "critical"):
            expressions.fires(
                "CeleryQueueOldestMessageTooOld",
                labels(broker=broker, queue_name=QUEUE),
                severity=severity,
                timeout=30,
            )
        s = exporter.scrape()
        assert s.get("celery_queue_length", queue_name=QUEUE) == 1  # nothing consumed
        age = s.get("celery_queue_oldest_message_age_seconds", queue_name=QUEUE)
        assert age is not None and abs(age - (time.time() - published)) <= 2
        assert prometheus.query(f"celery_vitals_event_stream_up{{{B}}}") == []
        expressions.quiet("CeleryQueueNotDraining", "CeleryWorkerDown")
