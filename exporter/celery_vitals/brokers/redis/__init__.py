"""Redis (and Sentinel) through kombu's redis transport: keys.py names every key, probe.py
polls queues and the server, dead_letters.py reads and moves dead letters, events.py
hooks the event stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery_vitals.brokers import Broker, Deliver

if TYPE_CHECKING:
    from celery_vitals.brokers.dead_letters import DeadLetterStore
    from celery_vitals.brokers.probe import QueueProbe
    from celery_vitals.config import Config


class Redis:
    """The Broker of Redis (see brokers/__init__.py for what each member means)."""

    name = "redis"
    supports_events = True
    supports_remote_control = True
    samples_dead_letters = True
    tells_version = True
    persistence = "disk"
    #: kombu's Redis transport re-delivers an unacked message after this long by default.
    unacked_redelivery_default: float | None = 3600.0
    stamps_timestamp_property = False

    def discovers_queues(self, config: Config) -> bool:
        return True  # the binding sets name every queue a worker declared

    def missing_requirement(self) -> str | None:
        return None  # kombu's own dependency; installation.py explains a broken one

    def secrets(self, transport_options: Mapping[str, Any]) -> list[str]:
        return []

    def probe(self, config: Config) -> QueueProbe:
        from celery_vitals.brokers.redis.probe import RedisProbe

        return RedisProbe(
            config.broker_url, config.broker_transport_options, timeout=config.probe_timeout
        )

    def dead_letters(self, config: Config) -> DeadLetterStore:
        from celery_vitals.brokers.redis.dead_letters import open_store

        return open_store(config)

    def event_callback(
        self, connection: Any, channel: Any, deliver: Deliver, drain_timeout: float
    ) -> Callable[[Any], None] | None:
        from celery_vitals.brokers.redis.events import event_callback

        return event_callback(channel, deliver)


BROKER: Broker = Redis()
