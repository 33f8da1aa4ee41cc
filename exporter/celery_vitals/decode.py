"""Message decoding: whatever a broker delivers on the event exchange, a body or a Skip.

Anyone who can publish to the broker can publish on Celery's event exchange,
so nothing here trusts a message: not its envelope (on Redis, the pub/sub
payload kombu wraps every message in), not its headers, not its compression,
not its size, not its JSON. Every failure is a :class:`Skip` naming its
reason, which the stream counts in ``celery_vitals_events_skipped_total``;
the connection and every other message are unaffected.

Sizes are bounded before the work they would cost: a message or a
decompressed body larger than :data:`MAX_BODY_BYTES` is skipped, and
decompression stops as soon as the output passes that limit, so one small
message that inflates to gigabytes costs a few megabytes at most.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import json
import lzma
import zlib
from collections.abc import Callable
from typing import Any, Protocol

# Celery batches events a few dozen at a time: a real body is kilobytes.
MAX_BODY_BYTES = 4 * 1024 * 1024
JSON = "application/json"


class Skip(Exception):  # a verdict on one message, not an error of ours
    """One message that cannot be used; ``reason`` is the skip counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


# kombu's compression content types and their aliases (kombu.compression)
_CODECS: dict[str, Callable[[], _Decompressor]] = {
    "application/x-gzip": zlib.decompressobj,  # kombu's "gzip" is a zlib stream
    "gzip": zlib.decompressobj,
    "zlib": zlib.decompressobj,
    "application/x-bz2": bz2.BZ2Decompressor,
    "bzip2": bz2.BZ2Decompressor,
    "bzip": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
    "lzma": lzma.LZMADecompressor,
    "xz": lzma.LZMADecompressor,
}


def inflate(codec: object, data: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """``data`` decompressed with the codec a ``compression`` header names, at most ``limit``."""
    make = _CODECS.get(codec) if type(codec) is str else None
    if make is None:
        raise Skip("unsupported_compression", f"unsupported compression {_show(codec)}")
    decompressor = make()
    try:
        out = decompressor.decompress(data, limit + 1)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as error:
        raise Skip("undecodable_body", f"body is not valid {codec}: {error}") from None
    if len(out) > limit:
        raise Skip("too_large", f"body decompresses past {limit} bytes")
    if not decompressor.eof:
        raise Skip("undecodable_body", f"body is a truncated {codec} stream")
    return out


def body(content_type: object, headers: object, data: bytes) -> Any:
    """The JSON a message carries, given its content type, headers and raw body."""
    if headers is not None and type(headers) is not dict:
        raise Skip("malformed_headers", f"headers are {type(headers).__name__}, not a mapping")
    if headers and "compression" in headers:
        data = inflate(headers["compression"], data)
    elif len(data) > MAX_BODY_BYTES:
        raise Skip("too_large", f"body of {len(data)} bytes")
    if content_type != JSON:  # Celery's; pickle and the rest are refused unread
        raise Skip("undecodable_body", f"content type {_show(content_type)} is not {JSON}")
    return _json(data, "undecodable_body")


def redis_payload(data: bytes | str) -> Any:
    """The JSON body of one Redis pub/sub payload: kombu's envelope around the message."""
    if len(data) > 2 * MAX_BODY_BYTES:  # base64 makes a body a third larger
        raise Skip("too_large", f"payload of {len(data)} bytes")
    envelope = _json(data, "malformed_envelope")
    if type(envelope) is not dict or type(envelope.get("properties")) is not dict:
        raise Skip("malformed_envelope", "payload is not a kombu message envelope")
    encoded = envelope.get("body")
    encoding = envelope["properties"].get("body_encoding")
    if type(encoded) is not str:
        raise Skip("malformed_envelope", f"envelope body is {type(encoded).__name__}")
    if encoding == "base64":
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Skip("malformed_envelope", "envelope body is not base64") from None
    elif encoding is None:
        raw = encoded.encode("utf-8", "surrogatepass")
    else:
        raise Skip("malformed_envelope", f"unknown body_encoding {_show(encoding)}")
    return body(envelope.get("content-type"), envelope.get("headers"), raw)


def _json(data: bytes | str, reason: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # RecursionError: nested thousands deep
        raise Skip(reason, f"not JSON ({type(error).__name__})") from None


def _show(value: object) -> str:
    """A value for a log line: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
