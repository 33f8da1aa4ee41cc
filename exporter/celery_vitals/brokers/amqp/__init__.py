"""RabbitMQ through py-amqp: declare.py (the passive declare), management.py (the HTTP
API), probe.py polls queues, dead_letters.py reads and moves dead letters, events.py
hooks the event stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery_vitals.brokers import Broker, Deliver

if TYPE_CHECKING:
    from celery_vitals.brokers.dead_letters import DeadLetterStore
    from celery_vitals.brokers.probe import QueueProbe
    from celery_vitals.config import Config


class Amqp:
    """The Broker of RabbitMQ (see brokers/__init__.py for what each member means)."""

    name = "amqp"
    supports_events = True
    supports_remote_control = True
    samples_dead_letters = True
    tells_version = True
    persistence = "durable-queues"
    unacked_redelivery_default: float | None = None  # redelivered when the channel closes
    stamps_timestamp_property = True  # head_message_timestamp (management API)

    def discovers_queues(self, config: Config) -> bool:
        return bool(config.rabbitmq_management_url)  # AMQP alone cannot list queues

    def missing_requirement(self) -> str | None:
        return None

    def secrets(self, transport_options: Mapping[str, Any]) -> list[str]:
        return []

    def probe(self, config: Config) -> QueueProbe:
        from celery_vitals.brokers.amqp.probe import AmqpProbe

        return AmqpProbe(
            config.broker_url,
            config.broker_transport_options,
            timeout=config.probe_timeout,
            management_url=config.rabbitmq_management_url,
        )

    def dead_letters(self, config: Config) -> DeadLetterStore:
        from celery_vitals.brokers.amqp.dead_letters import open_store

        return open_store(config)

    def event_callback(
        self, connection: Any, channel: Any, deliver: Deliver, drain_timeout: float
    ) -> Callable[[Any], None] | None:
        from celery_vitals.brokers.amqp.events import event_callback

        return event_callback(connection, deliver, drain_timeout)


BROKER: Broker = Amqp()
