"""Hostile input at unit level: decode.py's verdicts, FrameGuard, range checks, and
scrapes that survive data they cannot render."""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import struct
import subprocess
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.method_framing import frame_handler
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from celery_vitals import decode
from celery_vitals.brokers.amqp.events import FrameGuard
from celery_vitals.decode import MAX_BODY_BYTES, Skip
from celery_vitals.exposition import Exposition
from celery_vitals.tasks import number
from stack.net import wait_until
from tests.support.events import zeros_bomb
from tests.support.pipeline import T0, PipelineHarness, event, lifecycle

MiB = 1024 * 1024


def envelope(
    body: bytes,
    *,
    headers: object = None,
    content_type: object = decode.JSON,
    body_encoding: object = "base64",
) -> bytes:
    """A pub/sub payload as kombu's Redis transport publishes it."""
    encoded = base64.b64encode(body).decode() if body_encoding == "base64" else body.decode()
    return json.dumps(
        {
            "body": encoded,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {} if headers is None else headers,
            "properties": {
                "body_encoding": body_encoding,
                "delivery_tag": "t1",
                "delivery_info": {"exchange": "celeryev", "routing_key": "x"},
            },
        }
    ).encode()


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HEARTBEAT = json.dumps({"type": "worker-heartbeat", "hostname": "w1"}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"null", "malformed_envelope"),
        (b"[]", "malformed_envelope"),
        (b"{}", "malformed_envelope"),
        (b"42", "malformed_envelope"),
        (b"", "malformed_envelope"),
        (b"\xff\xfe not json", "malformed_envelope"),
        (nested_json(10_000), "malformed_envelope"),
        (json.dumps({"body": "e30=", "properties": "a string"}).encode(), "malformed_envelope"),
        (
            json.dumps({"body": 7, "properties": {"body_encoding": "base64"}}).encode(),
            "malformed_envelope",
        ),
        (
            json.dumps({"body": "e30=", "properties": {"body_encoding": "rot13"}}).encode(),
            "malformed_envelope",
        ),
        (
            json.dumps({"body": "not base64!", "properties": {"body_encoding": "base64"}}).encode(),
            "malformed_envelope",
        ),
        (envelope(HEARTBEAT, headers="a string"), "malformed_headers"),
        (envelope(HEARTBEAT, headers=[1, 2]), "malformed_headers"),
        (
            envelope(HEARTBEAT, headers={"compression": "application/x-snappy"}),
            "unsupported_compression",
        ),
        (envelope(HEARTBEAT, headers={"compression": ["gzip"]}), "unsupported_compression"),
        (envelope(HEARTBEAT, headers={"compression": 7}), "unsupported_compression"),
        (envelope(HEARTBEAT, headers={"compression": "application/x-gzip"}), "undecodable_body"),
        (
            envelope(zlib.compress(HEARTBEAT)[:-4], headers={"compression": "zlib"}),
            "undecodable_body",
        ),
        (envelope(nested_json(10_000)), "undecodable_body"),
        (
            envelope(b"\x80\x04K\x01.", content_type="application/x-python-serialize"),
            "undecodable_body",
        ),
        (envelope(HEARTBEAT, content_type=None), "undecodable_body"),
        (envelope(b" " * (MAX_BODY_BYTES + 1)), "too_large"),
        (envelope(zeros_bomb(8 * MiB), headers={"compression": "application/x-gzip"}), "too_large"),
    ],
)
def test_redis_payloads_that_are_not_celery_events_are_skips(payload: bytes, reason: str) -> None:
    with pytest.raises(Skip) as raised:
        decode.redis_payload(payload)
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("compress", "codec"),
    [
        (lambda b: b, None),
        (zlib.compress, "application/x-gzip"),
        (zlib.compress, "zlib"),
        (bz2.compress, "application/x-bz2"),
        (lzma.compress, "application/x-lzma"),
    ],
)
def test_celery_messages_decode_plain_or_compressed(compress: Any, codec: str | None) -> None:
    headers = {"compression": codec} if codec else {}
    assert decode.redis_payload(envelope(compress(HEARTBEAT), headers=headers)) == {
        "type": "worker-heartbeat",
        "hostname": "w1",
    }


def test_a_body_without_base64_encoding_is_read_as_text() -> None:
    assert decode.redis_payload(envelope(HEARTBEAT, body_encoding=None))["hostname"] == "w1"


def test_a_decompression_bomb_costs_at_most_the_limit() -> None:
    bomb = zeros_bomb(256 * MiB)
    assert len(bomb) < 300_000  # one small message...
    tracemalloc.start()
    try:
        with pytest.raises(Skip) as raised:
            decode.body(decode.JSON, {"compression": "application/x-gzip"}, bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raised.value.reason == "too_large"
    assert peak < 3 * MAX_BODY_BYTES  # ...that would inflate to 256 MiB


# -- FrameGuard: in front of py-amqp's frame handler --------------------------------------

DELIVER = struct.pack(">HH", 60, 60)  # Basic.Deliver; its arguments are not read here


def nested_table(depth: int) -> bytes:
    """An AMQP field table with a table inside a table ``depth`` times."""
    table = struct.pack(">I", 0)
    for _ in range(depth):
        entry = b"\x01k" + b"F" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


def header(body_size: int, headers: bytes | None = None) -> bytes:
    """A Basic content header: content type application/json, optional raw headers."""
    flags = 0x8000 | (0x2000 if headers is not None else 0)
    frame = struct.pack(">HHQH", 60, 0, body_size, flags) + b"\x10application/json"
    return frame + (headers or b"")


class Delivered:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def __call__(self, channel: int, method: object, args: object, message: Any) -> None:
        self.messages.append(message)


def guarded(max_body: int = MAX_BODY_BYTES) -> tuple[FrameGuard, Delivered]:
    delivered = Delivered()
    connection = type("Connection", (), {"bytes_recv": 0})()
    return FrameGuard(frame_handler(connection, delivered), max_body), delivered


def test_headers_py_amqp_cannot_parse_become_one_skipped_message() -> None:
    guard, delivered = guarded()
    body = b'{"type": "worker-heartbeat"}'
    unguarded = frame_handler(type("Connection", (), {"bytes_recv": 0})(), Delivered())
    unguarded((1, 1, DELIVER))
    with pytest.raises(RecursionError):  # what py-amqp alone does with them
        unguarded((2, 1, header(len(body), nested_table(2000))))
    for frame in (
        (1, 1, DELIVER),
        (2, 1, header(len(body), nested_table(2000))),
        (3, 1, body),
        (1, 1, DELIVER),
        (2, 1, header(len(body))),
        (3, 1, body),
    ):
        guard(frame)
    first, second = delivered.messages
    assert first.properties == {"content_type": FrameGuard.UNDECODABLE}
    assert first.body == body  # its body frames were consumed with it
    with pytest.raises(Skip) as raised:
        FrameGuard.check(first.properties["content_type"])
    assert raised.value.reason == "malformed_headers"
    assert second.properties == {"content_type": "application/json"} and second.body == body
    FrameGuard.check(second.properties["content_type"])  # a real message passes


def test_a_body_past_the_limit_is_dropped_unread() -> None:
    guard, delivered = guarded(max_body=1000)
    chunk = b"x" * 400
    for frame in (
        (1, 1, DELIVER),
        (2, 1, header(1200)),
        (3, 1, chunk),
        (3, 1, chunk),
        (3, 1, chunk),
        (1, 1, DELIVER),
        (2, 1, header(2)),
        (3, 1, b"{}"),
    ):
        guard(frame)
    first, second = delivered.messages
    assert first.properties == {"content_type": FrameGuard.TOO_LARGE} and not first.body
    assert guard.dropping == {}
    assert second.body == b"{}"


# -- range checks where values enter ------------------------------------------------------


def test_numbers_beyond_what_a_float_holds_exactly_are_not_numbers() -> None:
    assert number(10**400) is None and number(-(10**400)) is None
    assert number(2**53) == float(2**53) and number(2**53 + 1) is None
    assert number(float("inf")) is None and number(float("nan")) is None
    assert number(1e300) is None and number(1.5) == 1.5


def test_hostile_heartbeat_values_are_skipped_observations() -> None:
    h = PipelineHarness()
    h.feed(
        *(
            event("worker-heartbeat", T0 + 2 * i, freq=1e-300, active=0, processed=i)
            for i in range(4)
        )
    )
    h.feed(
        event(
            "worker-heartbeat",
            T0 + 8,
            freq=2.0,
            active=-1,
            processed=10**400,
            loadavg=[float("inf"), 0, 0],
        )
    )
    skipped = "celery_vitals_observations_skipped_total"
    assert h.value(skipped, metric="celery_vitals_heartbeats_missed_total", reason="bad_value") == 4
    assert h.value(skipped, metric="celery_worker_tasks_active", reason="bad_value") == 1
    assert h.value(skipped, metric="celery_worker_tasks_processed", reason="bad_value") == 1
    assert h.value(skipped, metric="celery_worker_load1", reason="bad_value") == 1
    assert h.value("celery_vitals_heartbeats_missed_total") == 0
    assert h.value("celery_worker_tasks_active", hostname="w1@host") == 0
    assert h.value("celery_worker_tasks_processed", hostname="w1@host") == 3
    assert h.value("celery_worker_up", hostname="w1@host") == 1
    rendered = h.pipeline.exposition.render().decode()
    assert {f.name for f in text_string_to_metric_families(rendered)} >= {
        "celery_worker_up",
        "celery_vitals_heartbeats_missed",
    }


def test_a_long_gap_is_a_restart_not_millions_of_lost_heartbeats() -> None:
    h = PipelineHarness()
    h.feed(
        event("worker-heartbeat", T0, freq=0.1),
        event("worker-heartbeat", T0 + 9e10, freq=0.1),
        event("worker-heartbeat", T0 + 9e10 + 0.5, freq=0.1),
    )
    assert h.value("celery_vitals_heartbeats_missed_total") == 4


@pytest.mark.parametrize("stamp", [10**400, -1.0, 1e12, float("nan"), "soon", [1], True])
def test_an_implausible_timestamp_is_dropped_and_the_event_still_counts(stamp: object) -> None:
    h = PipelineHarness()
    received, started, succeeded = lifecycle("u1", "t")[1:]
    h.feed(received, {**started, "timestamp": stamp}, {**succeeded, "timestamp": stamp})
    assert h.task("celery_task_succeeded_total", "t") == 1
    assert h.task("celery_task_prefetch_wait_seconds_count", "t") is None
    assert h.task("celery_task_last_success_timestamp_seconds", "t") == T0  # the clock's
    assert (
        h.value("celery_vitals_observations_skipped_total", metric="timestamp", reason="bad_value")
        == 2
    )
    assert h.value("celery_vitals_event_lag_seconds") == T0 - received["timestamp"]


def test_retries_outside_an_int32_count_as_none() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="t", retries=10**400),
        event("task-failed", uuid="u1", exception="ValueError()"),
    )
    assert h.task("celery_task_failed_after_retries_total", "t") is None
    assert h.task("celery_task_failed_total", "t", exception="ValueError") == 1


HOSTILE_NUMBERS: list[object] = [
    10**400,
    -(10**400),
    2**63,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e-300,
    -1,
    0,
    "12",
    None,
    [],
    {},
    True,
]


def test_every_numeric_field_with_every_hostile_value_renders_parseable_metrics() -> None:
    """Each number an event carries, each hostile value: Prometheus' own parser (promtool)
    reads the text, prometheus_client's the OpenMetrics, and no family is left out."""
    h = PipelineHarness()
    fields = {
        "task-sent": ("timestamp", "retries", "eta"),
        "task-received": ("timestamp", "retries"),
        "task-started": ("timestamp",),
        "task-succeeded": ("timestamp", "runtime"),
        "worker-heartbeat": ("timestamp", "freq", "active", "processed", "loadavg"),
    }
    for index, value in enumerate(HOSTILE_NUMBERS):
        for event_type, names in fields.items():
            for field in names:
                task_id = f"u{index}-{event_type}-{field}"
                sent, received, started, succeeded = lifecycle(task_id, "t")
                bodies = {
                    "task-sent": sent,
                    "task-received": received,
                    "task-started": started,
                    "task-succeeded": succeeded,
                    "worker-heartbeat": event(
                        "worker-heartbeat", freq=2.0, active=1, processed=index, loadavg=[0.1, 0, 0]
                    ),
                }
                hostile = value if field != "loadavg" else [value, 0, 0]
                h.feed(*bodies.values(), {**bodies[event_type], field: hostile})
    exposition = h.pipeline.exposition
    text = exposition.render().decode()
    check = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: lint notes only
    assert "error while linting" not in check.stderr
    families = {f.name for f in om_parse(exposition.render(openmetrics=True).decode())}
    assert {"celery_task_succeeded", "celery_worker_up", "celery_vitals_events"} <= families
    assert exposition.errors == {}
    # one lifecycle per field and value (a hostile succeeded repeats a terminal: counted once)
    lifecycles = len(HOSTILE_NUMBERS) * sum(len(names) for names in fields.values())
    assert h.task("celery_task_succeeded_total", "t") == lifecycles == 208


# -- scrapes survive what they cannot render ----------------------------------------------


class Unrenderable(Collector):
    """A gauge no float can hold, between two that render."""

    def collect(self) -> Iterator[Metric]:
        for name, value in (("first", 1), ("huge", 10**400), ("last", 2)):
            family = GaugeMetricFamily(f"test_{name}", name)
            family.add_metric([], value)
            yield family


class FailsMidway(Collector):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("test_before", "before")
        family.add_metric([], 1)
        yield family
        raise RuntimeError("bug")


@pytest.mark.parametrize("openmetrics", [False, True])
def test_a_family_that_cannot_be_rendered_is_left_out_and_counted(openmetrics: bool) -> None:
    h = PipelineHarness()
    h.feed(*lifecycle("u1", "t"))
    exposition = h.pipeline.exposition
    exposition.collectors[1:1] = [Unrenderable(), FailsMidway()]
    text = exposition.render(openmetrics).decode()
    families = {
        f.name.removesuffix("_info")
        for f in (om_parse if openmetrics else text_string_to_metric_families)(text)
    }
    assert {
        "test_first",
        "test_last",
        "test_before",
        "celery_task_succeeded",
        "celery_vitals_build",
    } <= families
    assert "test_huge" not in families
    assert exposition.errors == {"test_huge": 1, "FailsMidway": 1}
    assert h.value("celery_vitals_scrape_errors_total", family="test_huge") == 1
    assert h.value("celery_vitals_scrape_errors_total", family="FailsMidway") == 1


def test_a_name_filter_renders_only_the_asked_families() -> None:
    h = PipelineHarness()
    h.feed(*lifecycle("u1", "t"))
    text = h.pipeline.exposition.render(
        names={
            "celery_task_succeeded_total",
            "celery_task_runtime_seconds_count",
            "celery_vitals_build_info",
        }
    ).decode()
    assert {f.name for f in text_string_to_metric_families(text)} == {
        "celery_task_succeeded",
        "celery_task_runtime_seconds",
        "celery_vitals_build_info",
    }
    assert b"celery_task_succeeded_total" in generate_latest(h.registry)


class Blocking(Collector):
    """Counts its collects; the first one waits until released."""

    def __init__(self) -> None:
        self.collects = 0
        self.release = threading.Event()

    def collect(self) -> Iterator[Metric]:
        self.collects += 1
        if self.collects == 1:
            assert self.release.wait(timeout=10)
        family = GaugeMetricFamily("test_collects", "collects")
        family.add_metric([], self.collects)
        yield family


def test_scrapes_that_waited_for_a_render_share_the_next_one() -> None:
    blocking = Blocking()
    clock_calls = []

    def clock() -> float:
        clock_calls.append(1)
        return time.monotonic()

    exposition = Exposition([blocking], clock=clock)
    bodies: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: bodies.append(exposition.render())) for _ in range(10)
    ]
    threads[0].start()
    wait_until(lambda: blocking.collects == 1, timeout=10, what="the first render running")
    for thread in threads[1:]:
        thread.start()
    # the first render's arrival and start, then each waiting scrape's arrival
    wait_until(lambda: len(clock_calls) == 2 + 9, timeout=10, what="9 scrapes waiting")
    blocking.release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert blocking.collects == 2  # one render for the first, one shared by the other nine
    assert sorted(bodies) == sorted(
        [
            b"# HELP test_collects collects\n# TYPE test_collects gauge\ntest_collects %d.0\n" % n
            for n in (1, *[2] * 9)
        ]
    )
    exposition.render()  # a scrape that arrives afterwards gets a render of its own
    assert blocking.collects == 3
