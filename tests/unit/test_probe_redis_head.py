"""RedisProbe reads the publication stamp of each queue's oldest message, on a fake channel.

kombu LPUSHes and workers BRPOP: the oldest message of a list is its right end
(``LINDEX key -1``). The fake pipeline keeps each list in Redis order (index 0 is
the left end) and records every command, so the test sees which end is read, that
nothing is popped, and that it all goes in the one pipeline of the LLENs.
"""

from __future__ import annotations

import json
from typing import Any

from celery_vitals.brokers.probe import QueueStats
from celery_vitals.brokers.redis.probe import RedisProbe, head_published
from celery_vitals.stamp import HEADER

SEP = "\x06\x16"
STEPS = [0, 3, 6, 9]


def envelope(stamp: Any = None, **headers: Any) -> bytes:
    """A message as kombu's Redis transport stores it (Celery's protocol 2 headers)."""
    if stamp is not None:
        headers[HEADER] = stamp
    return json.dumps(
        {
            "body": "W1tdLCB7fSwge31d",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "t.add", "id": "u1", **headers},
            "properties": {"delivery_tag": "d1", "body_encoding": "base64", "priority": 0},
        }
    ).encode()


class FakePipeline:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.replies: list[Any] = []

    def smembers(self, key: str) -> None:
        self.client.commands.append(("SMEMBERS", key))
        self.replies.append(set())

    def info(self) -> None:
        self.replies.append({"redis_version": "7.0.15"})

    def config_get(self, pattern: str) -> None:
        self.replies.append({pattern: ""})

    def llen(self, key: str) -> None:
        key = self.client.prefix + key  # kombu's client prefixes LLEN itself
        self.client.commands.append(("LLEN", key))
        self.replies.append(len(self.client.lists.get(key, [])))

    def lindex(self, key: str, index: int) -> None:
        self.client.commands.append(("LINDEX", key, index))
        items = self.client.lists.get(key, [])
        self.replies.append(items[index] if -len(items) <= index < len(items) else None)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.client.executed += 1
        return self.replies


class FakeClient:
    PREFIXED_SIMPLE_COMMANDS = ("LLEN", "LPUSH", "RPOP", "SMEMBERS", "ZRANGE")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lists: dict[str, list[bytes]] = {}
        self.commands: list[tuple[Any, ...]] = []
        self.executed = 0

    def lpush(self, key: str, *messages: bytes) -> None:
        """What a publisher does (kombu's _put): each message goes to the left end."""
        for message in messages:
            self.lists.setdefault(self.prefix + key, []).insert(0, message)

    def scan(self, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        return 0, []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakeChannel:
    """The parts of kombu's redis Channel that the probe reads."""

    sep = SEP
    priority_steps = STEPS
    keyprefix_queue = "_kombu.binding.%s"
    ack_emulation = False
    visibility_timeout = 3600

    def __init__(self, prefix: str = "") -> None:
        self.global_keyprefix = prefix
        self.client = FakeClient(prefix)

    def _q_for_pri(self, queue: str, pri: int) -> str:
        return f"{queue}{SEP}{pri}" if pri else queue


def poll(channel: FakeChannel, queues: list[str]) -> dict[str, QueueStats]:
    probe = RedisProbe("redis://127.0.0.1:1/0", {})
    probe.channel = lambda: channel  # type: ignore[method-assign]
    return {stats.name: stats for stats in probe.poll(queues).queues}


def test_the_oldest_stamp_of_every_priority_list_head_in_the_one_pipeline() -> None:
    channel = FakeChannel()
    lpush = channel.client.lpush
    lpush("jobs", envelope(1_800_000_100.25), envelope(1_800_000_120.5), envelope())
    lpush(f"jobs{SEP}3", envelope(), envelope(1_800_000_050.0))  # head without a stamp
    lpush(f"jobs{SEP}9", envelope(1_800_000_090.75), envelope(1_800_000_095.0))
    lpush("plain", envelope(), envelope(1_800_000_000.0))  # only later messages stamped
    lpush("celery", envelope(1_800_000_010))  # an int stamp is a time too
    before = {key: list(items) for key, items in channel.client.lists.items()}

    queues = poll(channel, ["jobs", "plain", "celery", "absent"])

    # jobs: heads 100.25 (step 0), none (step 3: unstamped), 90.75 (step 9) -> 90.75
    assert queues["jobs"] == QueueStats(
        "jobs", exists=True, ready=7, oldest_published=1_800_000_090.75
    )
    assert queues["plain"] == QueueStats("plain", exists=True, ready=2)
    assert queues["celery"].oldest_published == 1_800_000_010.0
    assert queues["absent"] == QueueStats("absent", exists=False)
    # read at the oldest end of every priority list, nothing consumed, one round trip
    assert [c for c in channel.client.commands if c[0] == "LINDEX"] == [
        ("LINDEX", key, -1)
        for queue in ("jobs", "plain", "celery", "absent")
        for key in (queue, f"{queue}{SEP}3", f"{queue}{SEP}6", f"{queue}{SEP}9")
    ]
    assert channel.client.lists == before
    assert channel.client.executed == 1


def test_lindex_gets_the_global_key_prefix_kombu_does_not_add() -> None:
    channel = FakeChannel(prefix="app1:")
    channel.client.lpush("jobs", envelope(1_800_000_001.5), envelope(1_800_000_002.5))
    assert poll(channel, ["jobs"])["jobs"] == QueueStats(
        "jobs", exists=True, ready=2, oldest_published=1_800_000_001.5
    )
    assert ("LINDEX", "app1:jobs", -1) in channel.client.commands
    assert ("LLEN", "app1:jobs") in channel.client.commands  # prefixed by kombu's client


def test_what_is_no_publication_stamp() -> None:
    assert head_published(envelope(1_800_000_000.125)) == 1_800_000_000.125
    assert head_published(envelope(1_800_000_000.125).decode()) == 1_800_000_000.125
    assert head_published(None) is None  # an empty list
    assert head_published(envelope()) is None  # a publisher without the agent
    for bad in ("1800000000", True, 0, -5.0, None, [1.0], {"t": 1.0}):
        assert head_published(envelope(bad)) is None, bad
    assert head_published(envelope(float("nan"))) is None
    assert head_published(envelope(float("inf"))) is None
    assert head_published(b"\xff\xfe not json") is None
    assert head_published(envelope(10**400)) is None  # beyond any float
    assert head_published(b"[" * 100_000 + b"]" * 100_000) is None  # hostile nesting
    assert head_published(b"[1, 2, 3]") is None
    assert head_published(json.dumps({"headers": "no"}).encode()) is None
    assert head_published(json.dumps({"body": "x"}).encode()) is None
