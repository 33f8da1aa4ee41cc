"""celery_vitals.dlq without a broker: what a message is, sampling plans, the exporter gauge."""

from __future__ import annotations

import base64
import bz2
import datetime as dt
import json
import lzma
import pickle
import zlib
from collections.abc import Callable
from typing import Any

import click
import pytest

from celery_vitals import dlq
from celery_vitals.brokers import dead_letters
from celery_vitals.brokers.dead_letters import (
    Entry,
    Selection,
    Summary,
    classify,
    parse_envelope,
    sample_ranges,
)
from tests.support.pipeline import PipelineHarness, ScriptedProbe, redis_result, with_poller

HEADERS = {
    "task": "billing.charge",
    "id": "abc",
    "retries": 3,
    "argsrepr": "(1,)",
    "kwargsrepr": "{}",
}


def envelope(
    body: bytes, content_type: str = "application/json", headers: dict[str, Any] | None = None
) -> bytes:
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": HEADERS if headers is None else headers,
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": "t",
                "priority": 0,
                "delivery_info": {"exchange": "", "routing_key": "dead_letter"},
            },
        }
    ).encode()


def test_a_protocol_2_task_is_a_task_with_its_name_id_and_retries() -> None:
    entry = parse_envelope(envelope(json.dumps([[1], {}, {}]).encode()))
    assert (entry.kind, entry.task, entry.id, entry.retries, entry.args) == (
        "task",
        "billing.charge",
        "abc",
        3,
        "(1,)",
    )


@pytest.mark.parametrize(
    ("compression", "compress"),
    [
        ("application/x-gzip", zlib.compress),  # kombu's "gzip" is a zlib stream
        ("application/x-bz2", bz2.compress),
        ("application/x-lzma", lzma.compress),
    ],
)
def test_a_compressed_task_is_inflated_by_the_events_decoder(
    compression: str, compress: Callable[[bytes], bytes]
) -> None:
    body = compress(json.dumps([[1], {}, {}]).encode())
    entry = parse_envelope(envelope(body, headers={**HEADERS, "compression": compression}))
    assert (entry.kind, entry.task, entry.id, entry.args) == (
        "task",
        "billing.charge",
        "abc",
        "(1,)",
    )
    broken = parse_envelope(envelope(b"not bz2", headers={**HEADERS, "compression": compression}))
    assert broken.kind == "broken-json"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"not json", "broken-envelope"),
        (b'["a", "list"]', "broken-envelope"),
        (envelope(b"{broken"), "broken-json"),
        (envelope(pickle.dumps({"x": 1}), "application/x-python-serialize"), "pickle"),
        (envelope(b"<xml/>", "application/xml"), "unknown-content-type"),
        (envelope(b'{"hello": "world"}', headers={}), "not-celery"),
    ],
)
def test_what_is_not_a_celery_task_says_why(raw: bytes, kind: str) -> None:
    entry = parse_envelope(raw)
    assert entry.kind == kind
    assert not Selection().matches(entry, 0.0)  # replayed only when asked for by id


def test_pickle_is_never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    entry = parse_envelope(envelope(b"\x80\x04K\x01.", "application/x-python-serialize"))
    assert (entry.kind, entry.task, entry.id) == ("pickle", "billing.charge", "abc")
    assert Selection(ids=frozenset({"abc"})).matches(entry, 0.0)


def test_x_death_gives_origin_reason_and_time() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    headers = {
        **HEADERS,
        "x-death": [
            {
                "queue": "work",
                "reason": "rejected",
                "count": 1,
                "time": when,
                "exchange": "",
                "routing-keys": ["work"],
            },
            {"queue": "older", "reason": "expired", "count": 2, "time": when},
        ],
    }
    entry = classify(headers, "application/json", "utf-8", b"[[], {}, {}]")
    assert (entry.origin, entry.reason) == ("work", "rejected")
    assert entry.dead_at == when.replace(tzinfo=dt.UTC).timestamp()
    assert [d["reason"] for d in entry.deaths] == ["rejected", "expired"]


def test_documented_headers_stand_in_for_x_death() -> None:
    headers = {
        **HEADERS,
        "x-origin-queue": "work",
        "x-dead-lettered-at": 1000.5,
        "x-dead-letter-reason": "retries-exhausted",
    }
    entry = classify(headers, "application/json", "utf-8", b"[[], {}, {}]")
    assert (entry.origin, entry.reason, entry.dead_at) == ("work", "retries-exhausted", 1000.5)
    assert entry.age(1010.5) == 10.0


def test_a_small_queue_is_read_whole_and_a_large_one_sampled() -> None:
    assert sample_ranges(0, 100) == []
    assert sample_ranges(50, 100) == [(0, 50)]
    ranges = sample_ranges(1_000_000, 10_000)
    assert ranges[0] == (0, 5_000)
    assert sum(stop - start for start, stop in ranges) == 10_000
    assert len(ranges) == 51 and ranges[-1][1] <= 1_000_000
    assert ranges[-1][0] > 980_000  # windows reach the newest end


def test_a_sampled_summary_scales_its_estimate_to_the_depth() -> None:
    summary = Summary("dlq", depth=1000, sampled=True)
    for name in ("a", "a", "a", "b"):
        summary.add(Entry(kind="task", task=name))
    summary.add(Entry(kind="pickle", task="c"))
    assert summary.estimate() == {"a": 600, "b": 200}
    document = summary.as_json(0.0)
    assert (document["tasks"], document["not_tasks"], document["sample_size"]) == (
        {"a": 3, "b": 1},
        {"pickle": 1},
        5,
    )


def test_durations_and_rates() -> None:
    assert [dlq.parse_duration(t) for t in ("90", "90s", "30m", "12h", "7d")] == [
        90,
        90,
        1800,
        43200,
        604800,
    ]
    assert dlq.parse_rate("50/s") == 50 and dlq.parse_rate("600/m") == 10
    assert dlq.parse_rate("0") is None
    with pytest.raises(click.BadParameter):
        dlq.parse_duration("soon")


class FakeClock:
    """time.monotonic and time.sleep for dlq.RateLimit: time passes only when told."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limit_keeps_the_pace_without_banking_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(dead_letters, "time", clock)
    limit = dlq.RateLimit(100)
    for _ in range(50):  # each operation takes 1 ms of the clock
        limit.wait()
        clock.now += 0.001
    assert clock.now == pytest.approx(1000.0 + 0.49 + 0.001)  # the 50th began at 0.49 s
    assert clock.slept == pytest.approx([0.009] * 49)
    clock.now += 1.0  # a stall: the 100 waits it missed are not made up for at once
    clock.slept.clear()
    for _ in range(3):
        limit.wait()
    assert clock.slept == pytest.approx([0.01, 0.01])
    unbounded = dlq.RateLimit(None)
    for _ in range(1000):
        unbounded.wait()
    assert len(clock.slept) == 2


def test_the_gauge_comes_from_the_poller_thread_samples() -> None:
    harness = PipelineHarness()
    calls: list[str] = []

    def sampler(queue: str) -> dict[str, int]:
        calls.append(queue)
        return {"billing.charge": 5, "x" * 1000: 2}

    poller = with_poller(
        harness, ScriptedProbe(redis_result(1), redis_result(2)), dlq_sampler=sampler
    )
    poller.poll_once()
    assert calls == ["billing.dead"]
    assert (
        harness.value("celery_dlq_messages", queue_name="billing.dead", name="billing.charge") == 5
    )
    assert harness.value("celery_dlq_messages", queue_name="billing.dead", name="other") == 2


def test_a_failing_sample_is_counted_and_drops_only_that_series() -> None:
    harness = PipelineHarness()

    def sampler(queue: str) -> dict[str, int]:
        raise ConnectionError("gone")

    poller = with_poller(harness, ScriptedProbe(redis_result(1)), dlq_sampler=sampler)
    poller.poll_once()
    assert poller.errors == {"ConnectionError": 1}
    assert poller.dlq_messages == {}
    assert poller.up  # the depth poll itself worked
