"""The AMQP probe's own logic: dead-letter routing, counters and the management client.

The API answers are canned, shaped like RabbitMQ 3.10.8's (recorded from the
real node the integration tests start); the management client talks to a
small HTTP server on loopback so that URLs, auth headers and errors are real.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest

from celery_vitals.brokers.amqp.management import (
    Binding,
    ExchangeInfo,
    ManagementError,
    dead_letter_route,
    dead_letter_targets,
    head_timestamp,
    ingress_counter,
    memory_facts,
    parse_bindings,
    queue_stats,
    routed_queues,
    topic_matches,
)
from celery_vitals.brokers.amqp.probe import AmqpProbe
from celery_vitals.brokers.probe import QueueStats, is_plumbing

PASSWORD = "pa55:w@rd/%"
QUOTED = quote(PASSWORD, safe="")


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("work.dead", "work.dead", True),
        ("work.*", "work.dead", True),
        ("work.*", "work", False),
        ("work.*", "work.dead.letter", False),
        ("work.#", "work", True),
        ("work.#", "work.dead.letter", True),
        ("#", "", True),
        ("#", "anything.at.all", True),
        ("*", "", False),
        ("#.dead", "work.dead", True),
        ("#.dead", "dead", True),
        ("#.dead", "work.dead.not", False),
        ("*.#.c", "a.b.b.c", True),
        ("*.#.c", "c", False),
        ("a.*.#", "a.b", True),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_dead_letter_route_from_arguments_and_policy() -> None:
    assert dead_letter_route(
        {"arguments": {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "work.dead"}}
    ) == ("dlx", "work.dead")
    assert dead_letter_route({"arguments": {"x-dead-letter-exchange": "dlx"}}) == ("dlx", None)
    assert dead_letter_route(
        {
            "arguments": {},
            "effective_policy_definition": {
                "dead-letter-exchange": "pdlx",
                "dead-letter-routing-key": "pkey",
            },
        }
    ) == ("pdlx", "pkey")
    # arguments win over the policy, exchange and key each on its own (as RabbitMQ does)
    assert dead_letter_route(
        {
            "arguments": {"x-dead-letter-exchange": "dlx"},
            "effective_policy_definition": {
                "dead-letter-exchange": "pdlx",
                "dead-letter-routing-key": "pkey",
            },
        }
    ) == ("dlx", "pkey")
    assert dead_letter_route({"arguments": {"x-dead-letter-exchange": ""}}) == ("", None)
    assert dead_letter_route({"arguments": {}, "effective_policy_definition": {}}) is None
    assert dead_letter_route({"arguments": [], "effective_policy_definition": None}) is None
    assert dead_letter_route({}) is None


def test_a_delay_queue_is_not_dead_lettering() -> None:
    assert (
        dead_letter_route({"arguments": {"x-message-ttl": 5000, "x-dead-letter-exchange": "work"}})
        is None
    )
    assert (
        dead_letter_route(
            {
                "arguments": {"x-dead-letter-exchange": "work"},
                "effective_policy_definition": {"message-ttl": 5000},
            }
        )
        is None
    )


def binding(destination: str, key: str, kind: str = "queue") -> dict[str, Any]:
    """One item of /api/exchanges/<vhost>/<name>/bindings/source, as 3.10 answers it."""
    return {
        "source": "x",
        "vhost": "/",
        "destination": destination,
        "destination_type": kind,
        "routing_key": key,
        "arguments": {},
        "properties_key": key,
    }


EXCHANGES = {
    "dlx": ExchangeInfo(
        "direct", parse_bindings([binding("work.dead", "work.dead"), binding("other", "other.key")])
    ),
    "fan": ExchangeInfo("fanout", parse_bindings([binding("fan.a", ""), binding("fan.b", "x")])),
    "top": ExchangeInfo(
        "topic", parse_bindings([binding("top.a", "dead.#"), binding("top.b", "*.alive")])
    ),
    "outer": ExchangeInfo(
        "direct", parse_bindings([binding("inner", "k", "exchange"), binding("outer.q", "other")])
    ),
    "inner": ExchangeInfo(
        "fanout", parse_bindings([binding("inner.q", ""), binding("outer", "", "exchange")])
    ),
}


def lookup(name: str) -> ExchangeInfo | None:
    return EXCHANGES.get(name)


def test_parse_bindings_skips_what_is_not_a_binding() -> None:
    assert parse_bindings([binding("q", "k"), "junk", None]) == (Binding("q", "queue", "k"),)
    assert parse_bindings({"error": "not found"}) == ()


def test_routing_per_exchange_type() -> None:
    assert routed_queues("dlx", "work.dead", lookup) == {"work.dead"}
    assert routed_queues("dlx", "nothing.bound", lookup) == set()
    # the message's own routing key is unknown: every binding may match
    assert routed_queues("dlx", None, lookup) == {"work.dead", "other"}
    assert routed_queues("fan", "whatever", lookup) == {"fan.a", "fan.b"}
    assert routed_queues("top", "dead.letter", lookup) == {"top.a"}
    assert routed_queues("top", "still.alive", lookup) == {"top.b"}
    assert routed_queues("top", None, lookup) == {"top.a", "top.b"}
    # the default exchange routes to the queue named by the key
    assert routed_queues("", "named", lookup) == {"named"}
    assert routed_queues("", None, lookup) == set()
    # an exchange that does not exist: RabbitMQ drops the dead letters
    assert routed_queues("gone", "k", lookup) == set()
    # exchange-to-exchange bindings are followed, and the cycle back is cut
    assert routed_queues("outer", "k", lookup) == {"inner.q"}
    assert routed_queues("outer", None, lookup) == {"inner.q", "outer.q"}


def test_dead_letter_targets_of_a_listing() -> None:
    def queue(name: str, **arguments: Any) -> dict[str, Any]:
        return {"name": name, "arguments": arguments, "effective_policy_definition": {}}

    listing = [
        queue(
            "work", **{"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "work.dead"}
        ),
        queue("work.dead"),
        queue("other"),
        queue("fan.a"),
        queue("top.a"),
        queue("top.b"),
        queue("inner.q"),
        queue("outer.q"),
        queue("named"),
        queue(
            "topical",
            **{"x-dead-letter-exchange": "top", "x-dead-letter-routing-key": "dead.letter"},
        ),
        queue("by-name", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "named"}),
        queue("nested", **{"x-dead-letter-exchange": "outer", "x-dead-letter-routing-key": "k"}),
        # fan.b is bound but does not exist any more: not a target
        queue("fanned", **{"x-dead-letter-exchange": "fan"}),
        # Celery's native delayed delivery: TTL levels expiring into the task queues
        queue("celery_delayed_0", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "fan"}),
    ]
    asked: list[str] = []

    def counting_lookup(name: str) -> ExchangeInfo | None:
        asked.append(name)
        return lookup(name)

    assert dead_letter_targets(listing, counting_lookup) == {
        "work.dead",
        "top.a",
        "named",
        "inner.q",
        "fan.a",
    }
    assert sorted(asked) == sorted(set(asked))  # each exchange looked up once per poll


# -- counters and stats ----------------------------------------------------------------------

# /api/queues/%2F items from RabbitMQ 3.10.8 after 3 messages were dead-lettered from
# work (published 3 times by a client) into work.dead (trimmed backing_queue_status)
WORK = {
    "name": "work",
    "type": "classic",
    "node": "rabbit@a",
    "arguments": {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "work.dead"},
    "effective_policy_definition": {},
    "consumers": 1,
    "messages_ready": 0,
    "messages_unacknowledged": 0,
    "message_stats": {"publish": 3},
    "backing_queue_status": {
        "len": 0,
        "mode": "default",
        "next_deliver_seq_id": 3,
        "next_seq_id": 3,
        "version": 1,
    },
}
WORK_DEAD = {
    "name": "work.dead",
    "type": "classic",
    "node": "rabbit@a",
    "arguments": {},
    "effective_policy_definition": {},
    "consumers": 0,
    "messages_ready": 3,
    "messages_unacknowledged": 0,
    "backing_queue_status": {
        "len": 3,
        "mode": "default",
        "next_deliver_seq_id": 0,
        "next_seq_id": 3,
        "version": 1,
    },
}
QUORUM = {
    "name": "qq",
    "type": "quorum",
    "node": "rabbit@a",
    "arguments": {},
    "consumers": 2,
    "messages_ready": 7,
    "messages_unacknowledged": 1,
    "message_stats": {"publish": 11},
}


def test_a_classic_queue_counts_every_message_that_entered() -> None:
    # dead-lettered messages are not in message_stats.publish, but in next_seq_id
    assert ingress_counter(WORK_DEAD, dead_letter_target=True) == 3
    assert ingress_counter(WORK, dead_letter_target=False) == 3
    assert queue_stats(WORK_DEAD, dead_letter_target=True) == QueueStats(
        "work.dead", exists=True, ready=3, unacked=0, consumers=0, published_total=3
    )


def test_a_queue_without_sequence_numbers_counts_publishes_unless_it_is_a_dlq() -> None:
    assert ingress_counter(QUORUM, dead_letter_target=False) == 11
    # publish misses dead-lettered messages: the poller must fall back to depth growth
    assert ingress_counter(QUORUM, dead_letter_target=True) is None
    no_publisher = {key: value for key, value in QUORUM.items() if key != "message_stats"}
    assert ingress_counter(no_publisher, dead_letter_target=False) == 0
    assert queue_stats(QUORUM, dead_letter_target=False) == QueueStats(
        "qq", exists=True, ready=7, unacked=1, consumers=2, published_total=11
    )
    assert (
        queue_stats(QUORUM, dead_letter_target=False, counter_valid=False).published_total is None
    )


# a classic queue whose first ready message was published at 1_800_000_000 by a publisher
# with the agent (AMQP timestamp property, whole seconds)
STAMPED = {
    "name": "stamped",
    "type": "classic",
    "node": "rabbit@a",
    "arguments": {},
    "effective_policy_definition": {},
    "consumers": 0,
    "messages_ready": 2,
    "messages_unacknowledged": 0,
    "backing_queue_status": {"next_seq_id": 2},
    "head_message_timestamp": 1_800_000_000,
}


def test_the_head_message_timestamp_is_the_oldest_publication_time() -> None:
    assert head_timestamp(STAMPED) == 1_800_000_000.0
    assert queue_stats(STAMPED, dead_letter_target=False) == QueueStats(
        "stamped",
        exists=True,
        ready=2,
        unacked=0,
        consumers=0,
        published_total=2,
        oldest_published=1_800_000_000.0,
    )
    # no timestamp at the head, an empty queue, a quorum queue: nothing to tell
    for value in ("", None, 0, -1, True, "1800000000", float("nan"), float("inf")):
        assert head_timestamp({**STAMPED, "head_message_timestamp": value}) is None, value
    assert head_timestamp(QUORUM) is None


def test_memory_of_the_node_nearest_its_watermark() -> None:
    nodes = [
        {"name": "a", "running": True, "mem_used": 600, "mem_limit": 1000},
        {"name": "b", "running": True, "mem_used": 900, "mem_limit": 4000},
        {"name": "c", "running": False, "mem_used": 999, "mem_limit": 1000},
        {"name": "d", "running": True, "mem_used": 5, "mem_limit": 0},
    ]
    assert memory_facts(nodes) == {
        "celery_broker_memory_used_bytes": 600.0,
        "celery_broker_memory_limit_bytes": 1000.0,
    }
    assert memory_facts([]) == {}
    assert memory_facts({"error": "x"}) == {}


@pytest.mark.parametrize(
    ("name", "plumbing"),
    [
        ("celery", False),
        ("work.dead", False),
        ("celeryev.6f1c4a9e-0d1b-4c39-9a77-1c3d2a0c4f10", True),
        ("celery@worker-1.celery.pidbox", True),
        ("b4d5b1a0-3bfa-3c2a-9d7e-2b7a59b8a2d1.reply.celery.pidbox", True),
        ("amq.gen-Sr4x1MMZxhJ6zi31NJ7Vug", True),
        ("celery_delayed_27", True),
        ("myapp_celery_delayed_0", True),
        ("celery_delayed_delivery_archive", False),
        ("pidbox", False),
    ],
)
def test_celery_plumbing(name: str, plumbing: bool) -> None:
    assert is_plumbing(name) is plumbing


# -- the management client against an HTTP server ----------------------------------------------


class FakeManagementApi:
    """Answers canned JSON by path (query included); records what it was asked."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, Any, dict[str, str]]] = {}
        self.requests: list[tuple[str, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append((self.path, self.headers.get("Authorization")))
                status, body, headers = api.routes.get(
                    self.path, (404, {"error": "Object Not Found", "reason": "Not Found"}, {})
                )
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, body: Any, status: int = 200, **headers: str) -> None:
        self.routes[path] = (status, body, headers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def api() -> Iterator[FakeManagementApi]:
    fake = FakeManagementApi()
    yield fake
    fake.close()


QUEUES_PATH = (
    "/api/queues/%2F?columns=name,type,node,arguments,effective_policy_definition,"
    "messages_ready,messages_unacknowledged,consumers,message_stats.publish,"
    "backing_queue_status.next_seq_id,head_message_timestamp"
)
NODES_PATH = "/api/nodes?columns=name,running,uptime,mem_used,mem_limit"
OVERVIEW_PATH = "/api/overview?columns=rabbitmq_version"


def serve_broker(
    api: FakeManagementApi,
    *,
    uptime: int = 600_000,
    listing: list[dict[str, Any]] | None = None,
    prefix: str = "",
) -> None:
    api.answer(prefix + QUEUES_PATH, [WORK, WORK_DEAD, QUORUM] if listing is None else listing)
    api.answer(
        prefix + NODES_PATH,
        [
            {
                "name": "rabbit@a",
                "running": True,
                "uptime": uptime,
                "mem_used": 150_000_000,
                "mem_limit": 800_000_000,
            }
        ],
    )
    api.answer(prefix + OVERVIEW_PATH, {"rabbitmq_version": "3.10.8"})
    api.answer(prefix + "/api/exchanges/%2F/dlx", {"name": "dlx", "type": "direct"})
    api.answer(
        prefix + "/api/exchanges/%2F/dlx/bindings/source", [binding("work.dead", "work.dead")]
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_management_poll_from_the_api_alone(api: FakeManagementApi) -> None:
    serve_broker(api)
    probe = AmqpProbe("amqp://guest:guest@127.0.0.1:1//", {}, timeout=2, management_url=api.url())
    result = probe.poll(["work", "work.dead", "qq", "absent", "work"])
    assert result.queues == (
        QueueStats("work", exists=True, ready=0, unacked=0, consumers=1, published_total=3),
        QueueStats("work.dead", exists=True, ready=3, unacked=0, consumers=0, published_total=3),
        QueueStats("qq", exists=True, ready=7, unacked=1, consumers=2, published_total=11),
        QueueStats("absent", exists=False),
    )
    assert result.dead_letter_targets == {"work.dead"}
    assert result.facts == {
        "celery_broker_memory_used_bytes": 150_000_000.0,
        "celery_broker_memory_limit_bytes": 800_000_000.0,
    }
    assert result.info == {"transport": "amqp", "version": "3.10.8", "eviction_policy": ""}
    assert result.persistence == {}
    assert {auth for _, auth in api.requests} == {basic("guest", "guest")}
    probe.close()  # never connected over AMQP: nothing to close


def test_a_management_poll_carries_the_head_message_timestamp(api: FakeManagementApi) -> None:
    serve_broker(api, listing=[WORK, WORK_DEAD, STAMPED])
    probe = AmqpProbe("amqp://127.0.0.1:1//", {}, timeout=2, management_url=api.url())
    assert probe.poll(["stamped", "work"]).queues == (
        QueueStats(
            "stamped",
            exists=True,
            ready=2,
            unacked=0,
            consumers=0,
            published_total=2,
            oldest_published=1_800_000_000.0,
        ),
        QueueStats("work", exists=True, ready=0, unacked=0, consumers=1, published_total=3),
    )
    probe.close()


def test_no_counter_right_after_the_node_restarted(api: FakeManagementApi) -> None:
    """An unclean restart rounds next_seq_id up (3 -> 2048): that jump is no ingress."""
    serve_broker(api, uptime=600_000)
    probe = AmqpProbe("amqp://127.0.0.1:1//", {}, timeout=2, management_url=api.url())
    assert probe.poll(["work.dead"]).queues[0].published_total == 3

    recovered = {**WORK_DEAD, "backing_queue_status": {"next_seq_id": 2048}}
    serve_broker(api, uptime=4_000, listing=[WORK, recovered])
    assert probe.poll(["work.dead"]).queues[0].published_total is None
    serve_broker(api, uptime=19_000, listing=[WORK, recovered])
    assert probe.poll(["work.dead"]).queues[0].published_total == 2048

    moved = {**recovered, "node": "rabbit@b"}  # a mirrored queue failed over
    serve_broker(api, uptime=34_000, listing=[WORK, moved])
    assert probe.poll(["work.dead"]).queues[0].published_total is None
    serve_broker(api, uptime=49_000, listing=[WORK, moved])
    assert probe.poll(["work.dead"]).queues[0].published_total == 2048


def test_credentials_vhost_and_path_prefix(api: FakeManagementApi) -> None:
    broker = f"amqp://vitals:{QUOTED}@127.0.0.1:1/my%2Fvhost"
    vhost_path = "/api/queues/my%2Fvhost?columns=name"
    api.answer("/rabbitmq" + vhost_path, [{"name": "celery"}, {"name": "celeryev.x"}])
    api.answer(vhost_path, [{"name": "tasks"}])
    # no credentials in the management URL: the broker's
    assert AmqpProbe(broker, {}, management_url=api.url("/rabbitmq")).discover() == {"celery"}
    assert api.requests[-1] == ("/rabbitmq" + vhost_path, basic("vitals", PASSWORD))
    # credentials in the management URL win
    assert AmqpProbe(
        broker, {}, management_url=api.url().replace("://", "://monitor:m%40n@")
    ).discover() == {"tasks"}
    assert api.requests[-1] == (vhost_path, basic("monitor", "m@n"))


def test_errors_never_show_the_password(
    api: FakeManagementApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer("/api/queues/%2F?columns=name", {"error": "not_authorised"}, status=401)
    url = api.url().replace("://", f"://guest:{QUOTED}@")
    probe = AmqpProbe(f"amqp://guest:{QUOTED}@127.0.0.1:1//", {}, timeout=1, management_url=url)
    with pytest.raises(ManagementError) as raised:
        probe.discover()
    assert raised.value.status == 401
    assert str(raised.value) == "GET /api/queues/%2F answered HTTP 401"
    assert raised.value.__cause__ is None and raised.value.__context__ is not None
    assert PASSWORD not in repr(raised.value.__context__)
    assert PASSWORD not in caplog.text


def test_redirects_are_not_followed(api: FakeManagementApi) -> None:
    """A redirect would carry the Authorization header elsewhere."""
    api.answer("/api/queues/%2F?columns=name", {}, status=302, Location=api.url("/elsewhere"))
    with pytest.raises(ManagementError, match="HTTP 302"):
        AmqpProbe("amqp://127.0.0.1:1//", {}, management_url=api.url()).discover()
    assert [path for path, _ in api.requests] == ["/api/queues/%2F?columns=name"]


def test_a_server_without_columns_gets_asked_for_whole_objects(api: FakeManagementApi) -> None:
    # what 3.10 answers for a column it does not know: an empty list per queue
    api.answer("/api/queues/%2F?columns=name", [[], []])
    api.answer(
        "/api/queues/%2F", [{"name": "celery", "durable": True}, {"name": "work", "durable": True}]
    )
    probe = AmqpProbe("amqp://127.0.0.1:1//", {}, management_url=api.url())
    assert probe.discover() == {"celery", "work"}
    assert probe.discover() == {"celery", "work"}
    assert [path for path, _ in api.requests] == [
        "/api/queues/%2F?columns=name",
        "/api/queues/%2F",
        "/api/queues/%2F",
    ]


def test_answers_that_are_not_json_are_errors(api: FakeManagementApi) -> None:
    api.answer("/api/queues/%2F?columns=name", "not a list")
    api.answer("/api/queues/%2F", {"not": "a list"})
    with pytest.raises(ManagementError, match="did not answer a list"):
        AmqpProbe("amqp://127.0.0.1:1//", {}, management_url=api.url()).discover()


def test_without_management_nothing_is_discovered() -> None:
    assert AmqpProbe("amqp://127.0.0.1:1//", {}).discover() == set()


def test_transport_timeouts_never_exceed_the_probe_timeout() -> None:
    probe = AmqpProbe(
        "amqp://127.0.0.1:1//",
        {"read_timeout": 30, "write_timeout": 0.5, "confirm_publish": True},
        timeout=2,
    )
    assert probe.transport_options == {
        "read_timeout": 2,
        "write_timeout": 0.5,
        "confirm_publish": True,
    }
