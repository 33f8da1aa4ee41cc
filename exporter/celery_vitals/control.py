"""The Celery app celery-vitals talks to the workers with: a connection factory and
remote-control broadcasts, never a task producer."""

from __future__ import annotations

from celery import Celery
from celery.app.control import Control
from kombu import Queue
from kombu.pidbox import Mailbox

from celery_vitals.config import Config


class ExclusiveRepliesMailbox(Mailbox):  # type: ignore[misc]  # kombu is untyped
    """The remote-control mailbox, its broadcast reply queue always exclusive.

    RabbitMQ 4 refuses transient queues that are not exclusive (error 541), and
    kombu before 5.5 declares the reply queue auto-delete but not exclusive. An
    exclusive queue lives as long as the connection that declared it, which is
    the one that collects the replies.
    """

    @property
    def reply_queue(self) -> Queue:
        return Queue(
            f"{self.oid}.{self.reply_exchange.name}",
            exchange=self.reply_exchange,
            routing_key=self.oid,
            durable=False,
            exclusive=True,
            auto_delete=True,
            expires=self.reply_queue_expires,
            message_ttl=self.reply_queue_ttl,
        )


class ExclusiveRepliesControl(Control):  # type: ignore[misc]  # celery is untyped
    Mailbox = ExclusiveRepliesMailbox


def celery_app(config: Config) -> Celery:
    """A Celery app used only as a connection factory and for control broadcasts (their
    reply queues exclusive, as RabbitMQ 4 wants them)."""
    app = Celery(
        "celery-vitals",
        broker=config.broker_url,
        set_as_current=False,
        control=ExclusiveRepliesControl,
    )
    app.conf.update(
        broker_transport_options=dict(config.broker_transport_options),
        broker_connection_retry_on_startup=False,
        event_queue_ttl=config.event_queue_ttl,
        event_queue_expires=config.event_queue_expires,
    )
    return app
