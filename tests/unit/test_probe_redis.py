"""RedisProbe against a real redis-server (~50 ms to start): exact depths, unacked, facts.

Messages are written by kombu and Celery themselves, with the same transport
options the probe gets, so the key names are the ones a worker would use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.message import Message

from celery_vitals.brokers.probe import ProbeResult, QueueStats
from celery_vitals.brokers.redis.probe import RedisProbe
from stack.net import LOOPBACK, wait_until
from stack.redis import RedisServer
from tests.support.bounded import bounded_call

# what a call raises when the broker is gone or hangs (kombu wraps some of redis-py's)
BROKER_ERRORS = (redis.RedisError, OperationalError)
PRIORITY_OPTIONS = {
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client, for what the probe must find (raw keys) and for CONFIG SET."""
    client = redis.Redis(host=LOOPBACK, port=server.port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def probe() -> Iterator[Callable[..., RedisProbe]]:
    """Builds probes and closes them all at the end of the test."""
    made: list[RedisProbe] = []

    def build(url: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> RedisProbe:
        made.append(RedisProbe(url, options or {}, **kwargs))
        return made[-1]

    yield build
    for each in made:
        each.close()


def by_name(result: ProbeResult) -> dict[str, QueueStats]:
    return {stats.name: stats for stats in result.queues}


def task_queue(
    name: str, exchange: Exchange | None = None, routing_key: str | None = None
) -> Queue:
    """A queue as Celery declares one: a direct exchange of the same name."""
    return Queue(name, exchange or Exchange(name), routing_key=routing_key or name)


def publish(
    url: str,
    options: Mapping[str, Any],
    queue: Queue,
    counts: Mapping[int, int],
    routing_key: str | None = None,
) -> None:
    """``counts[priority]`` messages to ``queue`` (declared and bound), with kombu."""
    with Connection(url, transport_options=dict(options)) as connection:
        producer = connection.Producer()
        for priority, count in counts.items():
            for number in range(count):
                producer.publish(
                    {"n": number},
                    exchange=queue.exchange,
                    routing_key=routing_key or queue.routing_key,
                    declare=[queue],
                    priority=priority,
                    retry=True,
                )


@contextlib.contextmanager
def unacked(
    url: str, options: Mapping[str, Any], queues: list[Queue], count: int
) -> Iterator[tuple[list[Message], float, float]]:
    """A consumer that received ``count`` messages and acks none while the block runs.

    Yields the messages and the wall-clock window in which they were delivered.
    On exit the connection closes and kombu restores them to their queues.
    """
    with Connection(url, transport_options=dict(options)) as connection:
        received: list[Message] = []
        consumer = Consumer(
            connection.default_channel,
            queues,
            no_ack=False,
            callbacks=[lambda _body, message: received.append(message)],
        )
        consumer.qos(prefetch_count=count)
        with consumer:
            before = time.time()
            deadline = time.monotonic() + 10
            while len(received) < count:
                assert time.monotonic() < deadline, f"received {len(received)} of {count}"
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=1)
            after = time.time()
            yield received, before, after


# -- depth ----------------------------------------------------------------------------


def test_celery_priority_tasks_are_counted_in_every_priority_list(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    app = Celery("prio", broker=server.url(), set_as_current=False)
    app.conf.update(
        broker_transport_options=PRIORITY_OPTIONS, broker_connection_retry_on_startup=True
    )
    try:
        for priority, count in {0: 2, 1: 1, 5: 3, 9: 4}.items():
            for _ in range(count):
                app.send_task("t.prio", queue="prio", priority=priority)
        for _ in range(3):
            app.send_task("t.plain", queue="plain")
    finally:
        app.close()
    # the messages really sit in four lists, as kombu names them with sep ":"
    assert {key: admin.llen(key) for key in (b"prio", b"prio:1", b"prio:5", b"prio:9")} == {
        b"prio": 2,
        b"prio:1": 1,
        b"prio:5": 3,
        b"prio:9": 4,
    }

    queues = by_name(probe(server.url(), PRIORITY_OPTIONS).poll(["prio", "plain"]))
    # depths only: whether this process stamps what it publishes (a test installed the
    # agent before) does not matter here; test_probe_redis_head.py tests the stamps
    queues = {name: replace(stats, oldest_published=None) for name, stats in queues.items()}
    assert queues["prio"] == QueueStats("prio", exists=True, ready=10, unacked=0)
    assert queues["plain"] == QueueStats("plain", exists=True, ready=3, unacked=0)
    assert queues["prio"].consumers is None  # Redis cannot tell

    # Default options (steps 0/3/6/9, sep "\x06\x16") look at other keys: the
    # probe must be given the workers' options to count priority lists.
    default = by_name(probe(server.url()).poll(["prio"]))
    assert default["prio"].ready == 2


def test_default_priority_steps_fold_priorities_into_four_lists(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    queue = task_queue("jobs")
    publish(server.url(), {}, queue, {0: 1, 2: 2, 4: 3, 8: 4, 9: 5})
    assert admin.llen("jobs") == 3  # 0 and 2 fold into step 0
    assert admin.llen("jobs\x06\x163") == 3 and admin.llen("jobs\x06\x166") == 4
    assert admin.llen("jobs\x06\x169") == 5
    assert by_name(probe(server.url()).poll(["jobs"]))["jobs"].ready == 15


@pytest.mark.parametrize("prefix", ["app1:", "t[1]*?:"])  # glob characters are literals
def test_global_keyprefix_and_sep_are_honoured(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe], prefix: str
) -> None:
    mine = {"global_keyprefix": prefix, "sep": "|", "priority_steps": [0, 5]}
    theirs = {"global_keyprefix": "other:", "sep": "|", "priority_steps": [0, 5]}
    publish(server.url(), mine, task_queue("shared"), {0: 2, 7: 3})
    publish(server.url(), mine, task_queue("only-mine"), {0: 1})
    publish(server.url(), theirs, task_queue("shared"), {0: 5})
    assert admin.llen(f"{prefix}shared|5") == 3

    prefixed = probe(server.url(), mine)
    assert prefixed.discover() == {"shared", "only-mine"}
    queues = by_name(prefixed.poll(["shared", "only-mine"]))
    assert (queues["shared"].ready, queues["only-mine"].ready) == (3 + 2, 1)

    # Without the prefix nothing of it is visible: absent, not 0.
    bare = probe(server.url(), {"sep": "|", "priority_steps": [0, 5]})
    assert bare.discover() == set()
    assert by_name(bare.poll(["shared"]))["shared"] == QueueStats("shared", exists=False)


def test_absent_and_bound_but_empty_queues(
    server: RedisServer, probe: Callable[..., RedisProbe]
) -> None:
    with Connection(server.url()) as connection:
        task_queue("idle")(connection.default_channel).declare()  # bound, never written
    result = probe(server.url()).poll(["idle", "misspelled", "idle"])
    assert result.queues == (
        QueueStats("idle", exists=True, ready=0, unacked=0),
        QueueStats("misspelled", exists=False, ready=None, unacked=None),
    )


def test_scan_covers_a_keyspace_larger_than_one_scan_batch(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    with admin.pipeline(transaction=False) as pipe:
        for number in range(5000):
            pipe.set(f"celery-task-meta-{number}", "x")
        pipe.execute()
    names = {f"q{number}" for number in range(30)}
    for name in names:
        publish(server.url(), {}, task_queue(name), {0: 1})
    tested = probe(server.url())
    assert tested.discover() == names
    assert all(stats.ready == 1 for stats in tested.poll(sorted(names)).queues)


# -- discovery ------------------------------------------------------------------------


def test_discover_returns_task_queues_without_celery_plumbing(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    app = Celery("plumbing", broker=server.url(), set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    try:
        app.send_task("t.a", queue="emails")
        app.send_task("t.b", queue="reports")
        with Connection(server.url()) as connection:
            # Celery's own bindings, made by Celery's own code:
            mailbox = app.control.mailbox(connection)
            # w1@host.celery.pidbox on the celery.pidbox fanout exchange
            mailbox.Node("w1@host").listen(channel=connection.default_channel)
            # <oid>.reply.celery.pidbox on the reply.celery.pidbox direct exchange, as a
            # client declares it to collect replies (ping, inspect)
            mailbox.reply_queue(connection.default_channel).declare()
            receiver = app.events.Receiver(connection, handlers={})
            (consumer,) = receiver.get_consumers(
                partial(Consumer, connection.default_channel), connection.default_channel
            )
            with consumer:  # celeryev.<uuid> on the celeryev exchange
                raw = {key.decode() for key in admin.scan_iter("_kombu.binding.*")}
                assert {
                    "_kombu.binding.celeryev",
                    "_kombu.binding.celery.pidbox",
                    "_kombu.binding.reply.celery.pidbox",
                } <= raw
                assert probe(server.url()).discover() == {"emails", "reports"}
    finally:
        app.close()


def test_bindings_that_cannot_be_parsed_are_skipped(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    publish(server.url(), {}, task_queue("good"), {0: 1})
    admin.sadd("_kombu.binding.broken", "no-separator-here")
    admin.sadd("_kombu.binding.broken", "a\x06\x16b\x06\x16c\x06\x16d")
    tested = probe(server.url())
    assert tested.discover() == {"good"}
    assert by_name(tested.poll(["good"]))["good"].ready == 1


# -- unacked --------------------------------------------------------------------------


def test_unacked_deliveries_are_counted_per_queue_with_the_oldest_age(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    options = {"visibility_timeout": 120}
    work = task_queue("work")
    logs = Queue("logs", Exchange("logx", type="topic"), routing_key="logs.*")
    publish(server.url(), options, work, {0: 5})
    publish(server.url(), options, logs, {0: 2}, routing_key="logs.error")
    publish(server.url(), options, task_queue("idle"), {0: 4})
    tested = probe(server.url(), options)

    with unacked(server.url(), options, [work, logs], 7) as (messages, before, after):
        started = time.time()
        result = tested.poll(["work", "logs", "idle"])
        finished = time.time()
        queues = by_name(result)
        assert queues["work"] == QueueStats(
            "work",
            exists=True,
            ready=0,
            unacked=5,
            oldest_unacked_age=queues["work"].oldest_unacked_age,
        )
        assert (queues["logs"].ready, queues["logs"].unacked) == (0, 2)  # matched by pattern
        assert queues["idle"] == QueueStats("idle", exists=True, ready=4, unacked=0)
        assert result.visibility_timeout == 120.0

        # exact: now - the oldest delivery time kombu wrote, with now within the poll
        index = dict(admin.zrange("unacked_index", 0, -1, withscores=True))
        for queue, routing_key in (("work", "work"), ("logs", "logs.error")):
            oldest = min(
                index[message.delivery_tag.encode()]
                for message in messages
                if message.delivery_info["routing_key"] == routing_key
            )
            age = queues[queue].oldest_unacked_age
            assert age is not None and started - oldest <= age <= finished - oldest
            assert before <= oldest <= after

        for message in messages:
            if message.delivery_info["routing_key"] == "work":
                message.ack()
                break
        after_ack = by_name(tested.poll(["work", "logs"]))
        assert (after_ack["work"].unacked, after_ack["logs"].unacked) == (4, 2)

    # connection closed: kombu put the unacked ones back, nothing is in flight
    final = by_name(tested.poll(["work", "logs"]))
    assert final["work"] == QueueStats("work", exists=True, ready=4, unacked=0)
    assert final["logs"] == QueueStats("logs", exists=True, ready=2, unacked=0)


def test_unacked_deliveries_under_a_global_keyprefix(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    """The unacked hash and index get the prefix too (HMGET and ZCARD: prefixed by the probe)."""
    options = {"global_keyprefix": "tenant:", "sep": "|", "visibility_timeout": 90}
    work = task_queue("work")
    publish(server.url(), options, work, {0: 2, 9: 1})
    with unacked(server.url(), options, [work], 2):
        assert admin.hlen("tenant:unacked") == 2 and admin.zcard("tenant:unacked_index") == 2
        result = probe(server.url(), options).poll(["work"])
        bare = probe(server.url(), {"sep": "|"}).poll(["work"])
    (work_stats,) = result.queues
    assert (work_stats.ready, work_stats.unacked) == (1, 2)
    assert work_stats.oldest_unacked_age is not None and work_stats.oldest_unacked_age < 10
    assert result.visibility_timeout == 90.0
    assert bare.queues == (QueueStats("work", exists=False),)


def test_unacked_read_limit_keeps_the_oldest(
    server: RedisServer, probe: Callable[..., RedisProbe]
) -> None:
    work = task_queue("work")
    publish(server.url(), {}, work, {0: 3})
    with unacked(server.url(), {}, [work], 3):
        complete = by_name(probe(server.url()).poll(["work"]))["work"]
        limited = by_name(probe(server.url(), unacked_limit=2).poll(["work"]))["work"]
    assert complete.unacked == 3
    assert limited.unacked == 2  # a lower bound beyond the limit...
    assert limited.oldest_unacked_age is not None and complete.oldest_unacked_age is not None
    # ...but the oldest delivery is read first: same age, give or take the time between polls
    assert 0 <= limited.oldest_unacked_age - complete.oldest_unacked_age < 1.0


def test_unacked_entries_kombu_did_not_write_are_skipped(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    publish(server.url(), {}, task_queue("work"), {0: 1})
    now = time.time()
    admin.zadd("unacked_index", {"garbage": now - 50, "orphan": now - 40, "anon": now - 30})
    admin.zadd("unacked_index", {"dict": now - 60})
    admin.hset(
        "unacked",
        mapping={
            "garbage": b"\xff{not json",
            "anon": '[{}, "", "direct"]',
            "dict": '{"a": 1, "b": 2, "c": 3}',
        },
    )
    queues = by_name(probe(server.url()).poll(["work", "direct"]))
    assert queues["work"] == QueueStats("work", exists=True, ready=1, unacked=0)
    # the default exchange routes by queue name; "orphan" has no hash entry: not in flight
    assert queues["direct"].unacked == 1 and queues["direct"].exists
    age = queues["direct"].oldest_unacked_age
    assert age is not None and 30 <= age < 40


def test_without_ack_emulation_unacked_is_unknown(
    server: RedisServer, probe: Callable[..., RedisProbe]
) -> None:
    publish(server.url(), {}, task_queue("work"), {0: 2})
    result = probe(server.url(), {"ack_emulation": False}).poll(["work"])
    assert result.queues == (QueueStats("work", exists=True, ready=2, unacked=None),)
    assert result.visibility_timeout is None


# -- broker facts ---------------------------------------------------------------------


def test_broker_facts_from_info_and_config(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    tested = probe(server.url())
    first = tested.poll([])
    assert first.queues == ()
    assert first.facts["celery_broker_memory_used_bytes"] > 0
    assert first.facts["celery_broker_memory_limit_bytes"] == 0  # no limit
    assert first.info == {
        "transport": "redis",
        "version": admin.info()["redis_version"],
        "eviction_policy": "noeviction",
    }
    assert first.persistence == {"rdb": False, "aof": False}  # the fixture's --save ""
    assert first.visibility_timeout == 3600.0  # kombu's default

    admin.config_set("maxmemory", 987654321)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.config_set("appendonly", "yes")
    admin.config_set("save", "900 1")
    second = tested.poll([])
    assert second.facts["celery_broker_memory_limit_bytes"] == 987654321
    assert second.info["eviction_policy"] == "allkeys-lru"
    assert second.persistence == {"rdb": True, "aof": True}
    used = admin.info("memory")["used_memory"]
    assert abs(second.facts["celery_broker_memory_used_bytes"] - used) < 1_000_000

    # Redis refuses SIGTERM while it writes its first AOF: let it finish, turn it off again
    wait_until(
        lambda: (
            admin.info("persistence")["aof_rewrite_in_progress"] == 0
            and admin.info("persistence")["aof_rewrite_scheduled"] == 0
        ),
        timeout=10,
        what="the initial AOF rewrite to finish",
    )
    admin.config_set("appendonly", "no")
    admin.config_set("save", "")


def test_refused_config_and_info_do_not_fail_the_poll(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    """An ACL user without CONFIG (as on managed Redis), then without INFO too."""
    admin.acl_setuser(
        "noconfig",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    admin.acl_setuser(
        "noinfo",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config", "-info"],
    )
    publish(server.url(), {}, task_queue("work"), {0: 2})

    url = f"redis://noconfig:secret@{LOOPBACK}:{server.port}/0"
    limited = probe(url)
    before = limited.poll(["work"])
    assert by_name(before)["work"].ready == 2
    assert before.persistence == {"aof": False}  # RDB unknown: no snapshot yet, no CONFIG
    assert before.info["version"] == admin.info()["redis_version"]

    admin.bgsave()
    wait_until(
        lambda: (
            admin.info("persistence")["rdb_bgsave_in_progress"] == 0
            and admin.info("persistence")["rdb_last_bgsave_time_sec"] >= 0
        ),
        timeout=10,
        what="the background save to finish",
    )
    assert limited.poll(["work"]).persistence == {"aof": False, "rdb": True}

    blind = probe(f"redis://noinfo:secret@{LOOPBACK}:{server.port}/0").poll(["work"])
    assert by_name(blind)["work"].ready == 2
    assert (blind.facts, blind.info, blind.persistence) == ({}, {"transport": "redis"}, {})


# -- failures -------------------------------------------------------------------------


def test_raises_while_the_broker_is_down_and_recovers_with_the_same_probe(
    server: RedisServer, probe: Callable[..., RedisProbe]
) -> None:
    publish(server.url(), {}, task_queue("work"), {0: 2})
    tested = probe(server.url(), timeout=2.0)
    assert by_name(tested.poll(["work"]))["work"].ready == 2

    server.kill()
    for call in (lambda: tested.poll(["work"]), tested.discover):
        with pytest.raises(BROKER_ERRORS):
            bounded_call(call, what="a call to a killed redis-server")

    server.start()  # same port, empty
    assert by_name(tested.poll(["work"]))["work"] == QueueStats("work", exists=False)
    publish(server.url(), {}, task_queue("work"), {0: 1})
    assert by_name(tested.poll(["work"]))["work"].ready == 1
    assert tested.discover() == {"work"}


def test_a_hung_broker_fails_the_poll_within_the_timeout(
    server: RedisServer, probe: Callable[..., RedisProbe]
) -> None:
    """A broker that accepts but never answers (SIGSTOP): every call gives up by itself.

    How long that takes against ``timeout``: benchmarks/recovery.py.
    """
    tested = probe(server.url(), timeout=0.5)
    assert tested.poll(["work"]).queues == (QueueStats("work", exists=False),)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        for call in (lambda: tested.poll(["work"]), tested.discover, lambda: tested.poll(["work"])):
            with pytest.raises(BROKER_ERRORS):
                bounded_call(call, what="a call to a stopped redis-server")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert tested.poll(["work"]).queues == (QueueStats("work", exists=False),)


def test_close_releases_the_connection_and_a_later_poll_reconnects(
    server: RedisServer, admin: redis.Redis, probe: Callable[..., RedisProbe]
) -> None:
    name = f"probe-{uuid.uuid4().hex[:6]}"
    tested = probe(server.url(), {"client_name": name})
    tested.poll([])

    def probe_connections() -> int:
        return sum(1 for client in admin.client_list() if client["name"] == name)

    assert probe_connections() >= 1
    tested.close()
    wait_until(lambda: probe_connections() == 0, timeout=5, what="the probe's connections to close")
    tested.poll([])
    assert probe_connections() >= 1
