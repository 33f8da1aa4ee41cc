"""Plain messages published straight into a broker's queue (no Celery app, no worker)."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue


def push(broker_url: str, queue: str, count: int, **queue_options: object) -> None:
    """Plain messages into a queue, as a producer whose consumer is missing would leave them."""
    with Connection(broker_url) as connection:
        target = Queue(queue, Exchange(queue, type="direct"), routing_key=queue, **queue_options)  # type: ignore[arg-type]
        producer = connection.Producer()
        for number in range(count):
            producer.publish(
                {"n": number},
                exchange=target.exchange,
                routing_key=queue,
                declare=[target],
                retry=True,
            )
