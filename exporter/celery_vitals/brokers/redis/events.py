"""The event stream on Redis: pub/sub payloads taken before kombu parses them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery_vitals import decode
from celery_vitals.brokers import Deliver


def event_callback(channel: Any, deliver: Deliver) -> Callable[[Any], None]:
    """Installs PubSubHook on the channel consuming the event queue: every payload goes
    through decode.redis_payload. The consumer callback it returns is never called."""
    PubSubHook.install(channel, lambda data: deliver(decode.redis_payload, data))
    return _never_called


def _never_called(message: object) -> None:  # pragma: no cover - PubSubHook delivers instead
    raise AssertionError("PubSubHook delivers the event stream's messages")


class PubSubHook:
    """Redis pub/sub payloads go to a handler as bytes, before kombu turns them into messages.

    kombu's Redis channel parses each payload as its JSON envelope and builds
    a Message from it; a payload that is not such an envelope (``null``, a
    list, properties without ``delivery_tag``, headers that are a string,
    JSON nested thousands deep) raises out of ``drain_events``, which costs
    the event stream a reconnect and every event in flight. Installed on the
    channel that consumes the event queue, this reads replies the way kombu
    does (``_receive_one``) and hands message payloads to ``decode``.
    """

    @staticmethod
    def install(channel: Any, handler: Callable[[bytes], None]) -> None:
        from kombu.utils.encoding import bytes_to_str

        connection_errors = channel.connection_errors

        def receive_one(client: Any) -> bool:
            try:
                response = client.parse_response()
            except connection_errors:
                channel._in_listen = None
                raise
            if not isinstance(response, list | tuple):
                return False
            payload = channel._handle_message(client, response)
            if not bytes_to_str(payload["type"]).endswith("message"):
                return False  # subscribe confirmations and the like
            handler(payload["data"])
            return True

        channel._receive_one = receive_one
