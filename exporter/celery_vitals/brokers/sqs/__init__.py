"""Amazon SQS through kombu's SQS transport and boto3: attributes.py (the attribute
names), probe.py polls queues, dead_letters.py reads dead letters. No event stream and
no remote control on SQS: the agents in the workers count tasks."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery_vitals.brokers import Broker, Deliver

if TYPE_CHECKING:
    from celery_vitals.brokers.dead_letters import DeadLetterStore
    from celery_vitals.brokers.probe import QueueProbe
    from celery_vitals.config import Config

#: Where AWS credentials may come from besides the URL: what the logs must not show either
AWS_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
#: Keys of kombu's SQS transport options (predefined_queues entries) that hold secrets
SECRET_OPTION_KEYS = ("secret_access_key", "session_token")


def option_secrets(value: Any) -> list[str]:
    """Secret values anywhere in transport options (predefined_queues credentials)."""
    if isinstance(value, Mapping):
        return [
            secret
            for key, item in value.items()
            for secret in (
                [str(item)] if key in SECRET_OPTION_KEYS and item else option_secrets(item)
            )
        ]
    return []


class Sqs:
    """The Broker of SQS (see brokers/__init__.py for what each member means)."""

    name = "sqs"
    supports_events = False
    supports_remote_control = False
    # reading a DLQ means receiving its messages, which costs calls and hides them
    samples_dead_letters = False
    tells_version = False
    persistence = "retention"
    unacked_redelivery_default: float | None = None  # per queue: the probe reads it
    stamps_timestamp_property = False

    def discovers_queues(self, config: Config) -> bool:
        return True  # ListQueues under queue_name_prefix, or the predefined queues

    def missing_requirement(self) -> str | None:
        if importlib.util.find_spec("boto3") is None:
            return "sqs:// needs boto3: pip install 'celery-vitals[sqs]'"
        return None

    def secrets(self, transport_options: Mapping[str, Any]) -> list[str]:
        found = option_secrets(transport_options)
        return found + [os.environ[name] for name in AWS_SECRET_VARIABLES if os.environ.get(name)]

    def probe(self, config: Config) -> QueueProbe:
        from celery_vitals.brokers.sqs.probe import SqsProbe

        return SqsProbe(
            config.broker_url,
            config.broker_transport_options,
            timeout=config.probe_timeout,
            max_queues=config.max_queue_names,
        )

    def dead_letters(self, config: Config) -> DeadLetterStore:
        from celery_vitals.brokers.sqs.dead_letters import open_store

        return open_store(config)

    def event_callback(
        self, connection: Any, channel: Any, deliver: Deliver, drain_timeout: float
    ) -> Callable[[Any], None] | None:
        return None  # no event stream on SQS


BROKER: Broker = Sqs()
