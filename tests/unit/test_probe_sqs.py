"""SQS: kombu's queue names, redrive policies, settings from the URL and options, and the
config an sqs:// broker gets (no event stream, secrets known to the log filter)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from celery_vitals.brokers.sqs.probe import SqsSettings, is_sqs_plumbing, parse_redrive, sqs_name
from celery_vitals.config import ConfigError, build


@pytest.mark.parametrize(
    ("queue", "prefix", "expected"),
    [
        ("celery", "", "celery"),
        ("billing.high", "prod-", "prod-billing-high"),  # dots become dashes
        ("a:b/c", "", "a_b_c"),  # other punctuation: underscores
        ("orders.fifo", "", "orders.fifo"),  # the FIFO suffix keeps its dot
        ("orders.eu.fifo", "x.", "x-orders-eu.fifo"),
    ],
)
def test_queue_names_are_kombus(queue: str, prefix: str, expected: str) -> None:
    assert sqs_name(queue, prefix) == expected


def test_plumbing_under_sqs_names_is_skipped() -> None:
    assert is_sqs_plumbing("celeryev-2f1c")
    assert is_sqs_plumbing("w1@h-celery-pidbox")
    assert not is_sqs_plumbing("celery")


def test_redrive_policy() -> None:
    policy = json.dumps(
        {
            "deadLetterTargetArn": "arn:aws:sqs:eu-west-1:111122223333:jobs-dlq",
            "maxReceiveCount": "5",
        }
    )
    assert parse_redrive(policy) == ("jobs-dlq", "111122223333", 5)
    assert parse_redrive('{"deadLetterTargetArn": "arn:aws:sqs:r:1:d"}') == ("d", "1", None)
    for broken in (
        None,
        "",
        "not json",
        "[]",
        '{"deadLetterTargetArn": 3}',
        '{"deadLetterTargetArn": "jobs-dlq"}',
    ):
        assert parse_redrive(broken) is None


def test_settings_from_the_url_and_kombus_options() -> None:
    s = SqsSettings.from_url(
        "sqs://AKID:se%2Fcret@127.0.0.1:4566", {"region": "eu-west-1", "queue_name_prefix": "prod-"}
    )
    assert (s.region, s.endpoint_url, s.key_id, s.secret, s.prefix) == (
        "eu-west-1",
        "http://127.0.0.1:4566",
        "AKID",
        "se/cret",
        "prod-",
    )
    assert "se/cret" not in repr(s)
    assert s.label("prod-jobs") == "jobs" and s.label("other") == "other"
    aws = SqsSettings.from_url("sqs://", {"region": "us-west-2", "is_secure": True})
    assert (aws.endpoint_url, aws.key_id, aws.secret) == (None, None, None)  # boto3's chain
    assert (
        SqsSettings.from_url("sqs://@localhost:9324", {"is_secure": True}).endpoint_url
        == "https://localhost:9324"
    )


def test_an_sqs_broker_gets_no_event_stream_and_its_secrets_are_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    predefined = {
        "celery": {
            "url": "https://sqs.eu-west-1.amazonaws.com/1/celery",
            "access_key_id": "AKID2",
            "secret_access_key": "per-queue",
        }
    }
    config = build(
        {
            "broker_url": "sqs://AKID:url-secret@",
            "broker_transport_option": (f"predefined_queues={json.dumps(predefined)}",),
        }
    )
    assert config.broker.name == "sqs"
    assert (config.event_stream, config.enable_events) == (False, False)
    assert sorted(config.secrets) == ["from-the-environment", "per-queue", "url-secret"]
    with pytest.raises(ConfigError, match="--queue-poll-interval: must be above 0 on SQS"):
        build({"broker_url": "sqs://", "queue_poll_interval": "0"})


def test_without_boto3_an_sqs_broker_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"sqs:// needs boto3: pip install 'celery-vitals\[sqs\]'"
    ):
        build({"broker_url": "sqs://"})
