"""The broker label: the same identity from every spelling of one broker's URL, never a
credential, and on every series the exporter and the agents export."""

from __future__ import annotations

import pytest

from celery_vitals.brokers import BROKER_LABEL, broker_name, check_name, identity
from celery_vitals.config import build
from celery_vitals.pipeline import Pipeline
from tests.support.metrics import brokers
from tests.support.pipeline import PipelineHarness, lifecycle


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        ("redis://redis:6379/0", {}, "redis://redis:6379/0"),
        # the default port and database filled in, the host lower-cased, no credentials
        ("redis://:s3cret@Redis", {}, "redis://redis:6379/0"),
        ("rediss://user:pw@cache.example:6380/2", {}, "redis://cache.example:6380/2"),
        ("redis://[::1]:6390/1", {}, "redis://[::1]:6390/1"),
        # a failover list: its first broker
        ("redis://a:6379/0;redis://b:6379/0", {}, "redis://a:6379/0"),
        ("sentinel://s1:26379;sentinel://s2:26379", {}, "sentinel://s1:26379/0"),
        # RabbitMQ: amqp, pyamqp and amqps are one transport; the vhost, / by default
        ("amqp://guest:guest@rabbit//", {}, "amqp://rabbit:5672//"),
        ("pyamqp://rabbit", {}, "amqp://rabbit:5672//"),
        ("amqp://u:p@rabbit:5673/prod", {}, "amqp://rabbit:5673/prod"),
        ("amqps://u:p@rabbit/prod%2Feu", {}, "amqp://rabbit:5671/prod/eu"),
        # SQS: no host, the region and the queue name prefix
        ("sqs://AKIAEXAMPLE:SECRETKEY@", {"region": "eu-west-1"}, "sqs://eu-west-1/"),
        (
            "sqs://",
            {"region": "eu-west-1", "queue_name_prefix": "prod-"},
            "sqs://eu-west-1/prod-",
        ),
        ("sqs://k:s@localhost:4566", {}, "sqs://localhost:4566/"),
        ("", {}, "unknown"),
    ],
)
def test_identity(url: str, options: dict[str, str], expected: str) -> None:
    assert identity(url, options) == expected


def test_sqs_region_defaults_as_kombu_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert identity("sqs://") == "sqs://us-east-1/"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert identity("sqs://") == "sqs://ap-south-1/"


def test_the_worker_and_the_exporter_spell_one_broker_alike() -> None:
    """The agent reads the worker's URL, the exporter its own: spelled differently, one name."""
    assert identity("redis://127.0.0.1:6379") == identity("redis://:@127.0.0.1:6379/0")
    assert identity("amqp://guest:guest@rabbit:5672//") == identity("pyamqp://rabbit")


def test_a_name_given_wins_and_is_checked() -> None:
    assert broker_name("redis://a:6379/0", {}, "shop") == "shop"
    assert broker_name("redis://a:6379/0", {}, None) == "redis://a:6379/0"
    for bad in ("", "   ", "x" * 201, "tab\there"):
        with pytest.raises(ValueError, match="printable characters"):
            check_name(bad)


def test_a_bad_broker_name_is_an_option_error() -> None:
    with pytest.raises(ValueError, match="--broker-name"):
        build({"broker_url": "redis://localhost:6379/0", "broker_name": "x" * 300})


def test_every_series_carries_the_broker_and_no_credential() -> None:
    """Series written from the trackers' caches and through prometheus_client alike."""
    h = PipelineHarness(broker_url="redis://:s3cret@Redis.local:6379/0")
    h.feed(*lifecycle("u1", "t"))
    text = h.pipeline.exposition.render().decode()
    seen = brokers(text)
    assert list(seen) == ["redis://redis.local:6379/0"], seen
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert seen["redis://redis.local:6379/0"] == len(samples)  # every sample, none without
    assert "celery_task_succeeded_total{broker=" in text  # a cached task family
    assert "celery_vitals_build_info{broker=" in text  # a prometheus_client family
    assert "s3cret" not in text
    # the registry (what tests read with get_sample_value) stays without it, like a
    # target label that only the scrape adds
    assert (
        h.registry.get_sample_value(
            "celery_task_succeeded_total", {"name": "t", "queue_name": "celery"}
        )
        == 1
    )


def test_the_given_name_labels_every_series() -> None:
    pipeline = Pipeline(build({"broker_url": "amqp://rabbit//", "broker_name": "shop"}))
    assert list(brokers(pipeline.exposition.render().decode())) == ["shop"]
    assert BROKER_LABEL == "broker"
