"""``celery-vitals dlq`` on a real Redis broker.

The DLQ follows the common Redis convention: a final-failure handler re-publishes
the task message to a ``dead_letter`` queue nobody consumes, with the documented
headers ``x-origin-queue``, ``x-dead-lettered-at`` and ``x-dead-letter-reason``.
Here the handler is simulated by ``app.send_task(..., queue=...)``: real Celery
task messages, as a worker would have published them.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner

from celery_vitals import dlq, logs
from celery_vitals.cli import cli
from stack.net import wait_until
from stack.redis import RedisServer
from stack.workers import CeleryWorker
from tests.support import dlq_cli
from tests.support.harness import Harness
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

NOW = time.time()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
def db(server: RedisServer) -> Iterator[tuple[str, redis.Redis]]:
    """A fresh database of the module's server per test (16 of them)."""
    number = db.counter = getattr(db, "counter", 0) + 1  # type: ignore[attr-defined]
    url = server.url(number % 16)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.close()


def publisher(url: str) -> Celery:
    app = Celery("publisher", broker=url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    return app


def dead_letter(
    app: Celery,
    queue: str,
    task: str,
    count: int,
    *,
    age: float = 60.0,
    origin: str = "work",
    reason: str = "retries-exhausted",
) -> list[str]:
    """``count`` task messages into the DLQ as a final-failure handler re-publishes them."""
    ids = []
    with app.producer_or_acquire() as producer:
        for n in range(count):
            result = app.send_task(
                task,
                args=(n,),
                kwargs={"note": "x" * 200},
                queue=queue,
                producer=producer,
                headers={
                    "x-origin-queue": origin,
                    "x-dead-letter-reason": reason,
                    "x-dead-lettered-at": NOW - age - n,
                },
            )
            ids.append(result.id)
    return ids


def foreign(client: redis.Redis, queue: str) -> None:
    """What foreign publishers and broken clients leave: not JSON, pickle, broken JSON."""

    def envelope(body: bytes, content_type: str, headers: dict[str, str]) -> bytes:
        return json.dumps(
            {
                "body": base64.b64encode(body).decode(),
                "content-type": content_type,
                "content-encoding": "binary",
                "headers": headers,
                "properties": {"body_encoding": "base64", "delivery_tag": "x"},
            }
        ).encode()

    client.lpush(queue, b"\xff not even json")
    client.lpush(
        queue,
        envelope(
            pickle.dumps(["never", "unpickled"]),
            "application/x-python-serialize",
            {"task": "legacy.pickled", "id": "pickled-1"},
        ),
    )
    client.lpush(
        queue,
        envelope(b"[[1], {", "application/json", {"task": "billing.charge", "id": "broken-1"}),
    )


def ids_in(client: redis.Redis, key: str) -> list[str]:
    found = []
    for raw in client.lrange(key, 0, -1):
        try:
            found.append(json.loads(raw)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            found.append("<foreign>")
    return found


def test_list_counts_tasks_origins_reasons_and_ages_exactly(db: tuple[str, redis.Redis]) -> None:
    url, client = db
    app = publisher(url)
    dead_letter(app, "dead_letter", "billing.charge", 7, age=100)
    dead_letter(app, "dead_letter", "mail.send", 3, age=10, origin="mail", reason="expired")
    foreign(client, "dead_letter")
    before = client.lrange("dead_letter", 0, -1)

    [summary] = dlq_cli.run_json(url, "list", "--dlq", "dead_*")
    assert summary["queue"] == "dead_letter"
    assert summary["depth"] == 13
    assert (summary["sampled"], summary["sample_size"], summary["inflight"]) == (False, 13, 0)
    assert summary["tasks"] == {"billing.charge": 7, "mail.send": 3}
    assert summary["not_tasks"] == {"broken-envelope": 1, "pickle": 1, "broken-json": 1}
    assert summary["origins"] == {"work": 7, "mail": 3, "unknown": 3}
    assert summary["reasons"] == {"retries-exhausted": 7, "expired": 3, "unknown": 3}
    assert summary["oldest_dead_lettered_at"] == pytest.approx(NOW - 106)
    assert summary["newest_dead_lettered_at"] == pytest.approx(NOW - 10)
    assert client.lrange("dead_letter", 0, -1) == before  # read, not consumed

    text = dlq_cli.run(url, "list", "dead_letter")
    assert text.returncode == 0
    assert "billing.charge 7, mail.send 3" in text.stdout

    before = time.time()
    shown = dlq_cli.run_json(url, "show", "dead_letter", "--task", "mail.*", "--limit", "2")
    after = time.time()
    assert [m["task"] for m in shown] == ["mail.send", "mail.send"]
    assert shown[0]["args"] == "(0,)" and len(shown[0]["kwargs"]) <= 80
    # dead-lettered at NOW - 10, its age taken while the command ran (rounded to 1 ms)
    dead_at = NOW - 10
    assert before - dead_at - 0.001 <= shown[0]["age_seconds"] <= after - dead_at + 0.001


def test_a_bzip2_compressed_dead_letter_is_listed_and_shown_as_its_task(
    db: tuple[str, redis.Redis],
) -> None:
    """Celery's ``compression='bzip2'`` (header ``compression: application/x-bz2``): the
    dead letters are inflated by the events' decoder (decode.py), not listed as broken JSON."""
    url, client = db
    app = publisher(url)
    with app.producer_or_acquire() as producer:
        for n in range(2):
            app.send_task(
                "billing.charge",
                args=(n,),
                kwargs={"note": "bz"},
                queue="dead_letter",
                producer=producer,
                compression="bzip2",
                headers={
                    "x-origin-queue": "work",
                    "x-dead-letter-reason": "retries-exhausted",
                    "x-dead-lettered-at": NOW - 50 - n,
                },
            )
    [stored, _] = client.lrange("dead_letter", 0, -1)
    assert json.loads(stored)["headers"]["compression"] == "application/x-bz2"

    [summary] = dlq_cli.run_json(url, "list", "dead_letter")
    assert (summary["depth"], summary["sample_size"]) == (2, 2)
    assert summary["tasks"] == {"billing.charge": 2}
    assert summary["not_tasks"] == {}
    assert summary["origins"] == {"work": 2}
    assert summary["reasons"] == {"retries-exhausted": 2}
    assert summary["oldest_dead_lettered_at"] == pytest.approx(NOW - 51)

    shown = dlq_cli.run_json(url, "show", "dead_letter")
    assert [(m["kind"], m["task"], m["args"], m["kwargs"]) for m in shown] == [
        ("task", "billing.charge", "(0,)", "{'note': 'bz'}"),
        ("task", "billing.charge", "(1,)", "{'note': 'bz'}"),
    ]


def test_a_glob_matches_queues_and_never_other_keys(db: tuple[str, redis.Redis]) -> None:
    """``--dlq '*.dead'`` finds bound queues (empty ones too), lists no binding names and
    queues with only a priority list, and skips the keys that match the glob but are no
    queue: kombu's binding set of an exchange named like a DLQ, a hash, a string."""
    url, client = db
    app = publisher(url)
    dead_letter(app, "work.dead", "billing.charge", 2)  # kombu binds it: _kombu.binding.work.dead
    dead_letter(app, "gone.dead", "mail.send", 1)
    client.delete("gone.dead")  # bound, and empty: no key of its own
    foreign(client, "mail.dead")  # LPUSHed by a handler, never bound
    client.lpush("prio.dead\x06\x163", b"\xff")  # priority 3 only: no "prio.dead" key
    client.lpush("x.deadline", b"\xff")  # a list the glob does not match
    client.set("result.dead", "x")
    client.hset("meta.dead", "field", "1")
    assert [
        client.type(key) for key in ("_kombu.binding.work.dead", "result.dead", "meta.dead")
    ] == [b"set", b"string", b"hash"]

    summaries = dlq_cli.run_json(url, "list", "--dlq", "*.dead")
    assert [(s["queue"], s["depth"], s["tasks"]) for s in summaries] == [
        ("gone.dead", 0, {}),
        ("mail.dead", 3, {}),
        ("prio.dead", 1, {}),
        ("work.dead", 2, {"billing.charge": 2}),
    ]
    text = dlq_cli.run(url, "list", "--dlq", "*.dead")
    assert (text.returncode, text.stderr) == (0, ""), text.stderr


def test_replay_runs_each_of_1000_messages_exactly_once_on_a_real_worker(
    db: tuple[str, redis.Redis], server: RedisServer, tmp_path: Path
) -> None:
    url, client = db
    ids = dead_letter(publisher(url), "dead_letter", "replay.record", 1000)
    foreign(client, "dead_letter")
    record_url = server.url(0 if url.endswith("/15") else 15)
    store = redis.Redis.from_url(record_url)
    store.delete("ran", "mode")

    dry = dlq_cli.run_json(url, "replay", "dead_letter", "--to", "work", "--dry-run", "--rate", "0")
    assert (dry["replayed"], dry["dry_run"], dry["targets"]) == (1000, True, {"work": 1000})
    assert client.llen("dead_letter") == 1003 and client.llen("work") == 0

    worker = CeleryWorker(
        "replay",
        url,
        tmp_path,
        app="tests.support.replay_app",
        task_events=False,
        concurrency=4,
        queues="work",
        extra_env={"RECORD_REDIS_URL": record_url},
    ).start()
    try:
        done = dlq_cli.run(url, "replay", "dead_letter", "--to", "work", "--rate", "2000/s")
        assert done.returncode == 0, done.stderr
        assert "replayed 1000 messages from dead_letter: work 1000" in done.stdout
        assert "dead_letter: replayed" in done.stderr  # plain progress lines: not a terminal
        wait_until(
            lambda: store.hlen("ran") == 1000,
            timeout=60,
            what="the worker to run 1000 replayed tasks",
            details=worker.tail,
        )
        wait_until(
            lambda: client.llen("work") == 0 and not client.hlen("unacked"),
            timeout=30,
            what="the work queue to drain",
        )
        worker.assert_running()
    finally:
        worker.stop_gracefully()
    ran = {key.decode(): int(value) for key, value in store.hgetall("ran").items()}
    assert set(ran) == set(ids)
    assert set(ran.values()) == {1}
    assert sorted(ids_in(client, "dead_letter")) == ["<foreign>", "broken-1", "pickled-1"]


def test_a_replay_killed_at_a_random_point_loses_nothing(
    db: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, client = db
    ids = dead_letter(publisher(url), "dead_letter", "replay.record", 1000)
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.3, 2.0)
    process = dlq_cli.spawn(
        url, tmp_path, "replay", "replay", "dead_letter", "--to", "target", "--rate", "400/s"
    )
    wait_until(
        lambda: client.llen("target") > 0 or not process.running,
        timeout=30,
        what="the replay to start",
    )
    time.sleep(delay)  # the random point: the kill itself is what is tested
    process.kill()
    places = (
        ids_in(client, "dead_letter")
        + ids_in(client, "target")
        + ids_in(client, "dead_letter.celery-vitals.inflight")
    )
    assert Counter(places) == Counter(ids), f"seed {seed}"  # each in exactly one place
    moved = client.llen("target")
    assert 0 < moved < 1000, f"seed {seed}: killed after {moved}"

    again = dlq_cli.run_json(url, "replay", "dead_letter", "--to", "target", "--rate", "0")
    assert again["replayed"] == 1000 - moved
    assert Counter(ids_in(client, "target")) == Counter(ids)
    assert client.llen("dead_letter") == 0


def test_concurrent_replays_do_not_duplicate(db: tuple[str, redis.Redis], tmp_path: Path) -> None:
    url, client = db
    ids = dead_letter(publisher(url), "dead_letter", "replay.record", 600)
    replays = [
        dlq_cli.spawn(
            url,
            tmp_path,
            f"replay-{n}",
            "replay",
            "dead_letter",
            "--to",
            "target",
            "--rate",
            "0",
            "--json",
        )
        for n in range(3)
    ]
    for process in replays:
        assert process.wait(60) == 0, process.tail()
        process.stop()
    assert Counter(ids_in(client, "target")) == Counter(ids)
    counts = [json.loads(p.output().split("\n", 1)[1])["replayed"] for p in replays]
    assert sum(counts) == 600


def test_replay_is_paced_and_filtered_by_task_and_limit(
    db: tuple[str, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command in this process, its RateLimit recorded: one wait at --rate before each
    message moved, and none for the ones filtered out. That a wait keeps the pace is
    tests/unit/test_dlq.py's, on a fake clock (no stopwatch here)."""
    url, client = db
    app = publisher(url)
    charges = dead_letter(app, "dead_letter", "billing.charge", 60)
    dead_letter(app, "dead_letter", "mail.send", 5)
    limits: list[RecordedRateLimit] = []
    monkeypatch.setattr(dlq, "RateLimit", lambda rate: RecordedRateLimit(rate, limits))
    monkeypatch.setattr(logs, "setup", lambda *_, **__: None)  # pytest's log capture stays
    done = run_in_process(
        url,
        "replay",
        "dead_letter",
        "--to",
        "work",
        "--task",
        "billing.*",
        "--limit",
        "50",
        "--rate",
        "100/s",
    )
    assert (done["replayed"], done["targets"]) == (50, {"work": 50})
    [limit] = limits
    assert (limit.interval, limit.waits) == (pytest.approx(0.01), 50)  # 100/s, one per message
    assert sorted(ids_in(client, "work")) == sorted(charges[:50])  # the oldest first
    [summary] = dlq_cli.run_json(url, "list", "dead_letter")
    assert summary["tasks"] == {"billing.charge": 10, "mail.send": 5}


class RecordedRateLimit(dlq.RateLimit):
    """dlq.RateLimit that counts its waits."""

    def __init__(self, rate: float | None, made: list[RecordedRateLimit]) -> None:
        super().__init__(rate)
        self.waits = 0
        made.append(self)

    def wait(self) -> None:
        self.waits += 1
        super().wait()


def run_in_process(broker_url: str, *args: str) -> Any:
    """``celery-vitals dlq ARGS --json`` in this process (click's runner), as dlq_cli runs it."""
    result = CliRunner().invoke(
        cli, ["dlq", *args, "--json"], env=dlq_cli.env(broker_url), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_huge_messages_are_cut_down_by_the_server_when_only_read(
    db: tuple[str, redis.Redis],
) -> None:
    url, client = db
    app = publisher(url)
    [huge] = [
        app.send_task(
            "report.build",
            args=("x" * 5_000_000,),
            queue="dead_letter",
            headers={"x-origin-queue": "work"},
        ).id
    ]
    client.lpush("dead_letter", b"\x00" * 2_000_000)  # not JSON either
    dead_letter(app, "dead_letter", "mail.send", 2)
    original = client.lindex("dead_letter", -1)
    assert original is not None and len(original) > 5_000_000

    [summary] = dlq_cli.run_json(url, "list", "dead_letter")
    assert summary["tasks"] == {"report.build": 1, "mail.send": 2}
    assert summary["not_tasks"] == {"broken-envelope": 1}
    [shown] = dlq_cli.run_json(url, "show", "dead_letter", "--limit", "1")
    assert (shown["id"], shown["task"]) == (huge, "report.build")
    assert shown["args"] == f"({len(original)} bytes, not read)"

    done = dlq_cli.run_json(url, "replay", "dead_letter", "--id", huge)
    assert done["targets"] == {"work": 1}
    moved = json.loads(client.lindex("work", 0) or b"{}")
    assert moved["body"] == json.loads(original)["body"]  # the whole message, not the cut


def test_replay_without_a_target_needs_the_origin_header(db: tuple[str, redis.Redis]) -> None:
    url, client = db
    app = publisher(url)
    with_origin = dead_letter(app, "dead_letter", "replay.record", 3, origin="work")
    app.send_task("replay.other", queue="dead_letter")  # no x-origin-queue
    done = dlq_cli.run_json(url, "replay", "dead_letter", "--rate", "0")
    assert done["targets"] == {"work": 3}
    assert done["skipped"] == {"no target (use --to)": 1}
    assert sorted(ids_in(client, "work")) == sorted(with_origin)


def test_foreign_messages_are_skipped_unless_asked_for_by_id(db: tuple[str, redis.Redis]) -> None:
    url, client = db
    foreign(client, "dead_letter")
    done = dlq_cli.run_json(url, "replay", "dead_letter", "--to", "target")
    assert done["replayed"] == 0 and client.llen("target") == 0
    done = dlq_cli.run_json(url, "replay", "dead_letter", "--to", "target", "--id", "pickled-1")
    assert done["replayed"] == 1
    assert ids_in(client, "target") == ["pickled-1"]
    assert client.llen("dead_letter") == 2


def test_purge_confirms_exports_then_deletes_only_what_was_selected(
    db: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, client = db
    app = publisher(url)
    old = dead_letter(app, "dead_letter", "billing.charge", 5, age=7200)
    recent = dead_letter(app, "dead_letter", "billing.charge", 2, age=10)
    mail = dead_letter(app, "dead_letter", "mail.send", 3, age=7200)
    export = tmp_path / "purged.jsonl"

    refused = dlq_cli.run(url, "purge", "dead_letter")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "celery-vitals: error: refusing to purge without confirmation: pass --yes"
    )
    assert client.llen("dead_letter") == 10

    done = dlq_cli.run_json(
        url,
        "purge",
        "dead_letter",
        "--task",
        "billing.*",
        "--older-than",
        "1h",
        "--export",
        str(export),
        "--yes",
    )
    assert (done["purged"], done["exported"]) == (5, 5)
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(old)
    assert json.loads(lines[0]["redis_envelope"])["headers"]["task"] == "billing.charge"
    assert sorted(ids_in(client, "dead_letter")) == sorted(recent + mail)
    assert client.llen("dead_letter.celery-vitals.inflight") == 0


def copies(client: redis.Redis, app: Celery, queue: str, count: int) -> list[str]:
    """``count`` task messages fast: one real one, copied with fresh ids."""
    [template_id] = dead_letter(app, "template", "replay.record", 1)
    template = json.loads(client.rpop("template") or b"{}")
    ids, pipe = [], client.pipeline(transaction=False)
    for _ in range(count):
        template["headers"]["id"] = str(uuid.uuid4())
        ids.append(template["headers"]["id"])
        pipe.lpush(queue, json.dumps(template))
    pipe.execute()
    assert template_id not in ids
    return ids


def test_a_purge_killed_at_a_random_point_exports_everything_it_deleted(
    db: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, client = db
    ids = copies(client, publisher(url), "dead_letter", 20_000)
    export = tmp_path / "purged.jsonl"
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 0.15)  # the whole purge takes ~0.7 s here
    process = dlq_cli.spawn(
        url, tmp_path, "purge", "purge", "dead_letter", "--yes", "--export", str(export)
    )
    wait_until(
        lambda: (export.exists() and export.stat().st_size > 0) or not process.running,
        timeout=30,
        what="the purge to export",
        details=process.tail,
    )
    time.sleep(delay)  # the random point: the kill itself is what is tested
    process.kill()

    def exported() -> list[str]:
        lines = export.read_text().splitlines()
        return [json.loads(line)["id"] for line in lines if line.endswith("}")]

    left = ids_in(client, "dead_letter")
    held = ids_in(client, "dead_letter.celery-vitals.inflight")
    assert 0 < len(left) < 20_000, f"seed {seed}: killed after the purge ended"
    assert not set(left) & set(held), f"seed {seed}"
    deleted = set(ids) - set(left) - set(held)
    assert deleted <= set(exported()), f"seed {seed}: deleted without an export line"
    assert not set(left) & set(exported()), f"seed {seed}"

    done = dlq_cli.run_json(url, "purge", "dead_letter", "--yes", "--export", str(export))
    assert (done["recovered"], done["purged"]) == (len(held), len(left) + len(held))
    assert set(exported()) == set(ids) and client.llen("dead_letter") == 0
    assert client.llen("dead_letter.celery-vitals.inflight") == 0


def test_an_interrupted_purge_is_put_back_by_the_next_run(db: tuple[str, redis.Redis]) -> None:
    url, client = db
    ids = dead_letter(publisher(url), "dead_letter", "replay.record", 3)
    # what a purge killed between taking and deleting leaves behind
    client.rpoplpush("dead_letter", "dead_letter.celery-vitals.inflight")
    [summary] = dlq_cli.run_json(url, "list", "dead_letter")
    assert (summary["depth"], summary["inflight"]) == (2, 1)
    done = dlq_cli.run_json(url, "replay", "dead_letter", "--to", "work", "--dry-run")
    assert done["replayed"] == 2  # a dry run changes nothing, not even the recovery list
    done = dlq_cli.run_json(url, "replay", "dead_letter", "--to", "work")
    assert (done["recovered"], done["replayed"]) == (1, 3)
    assert sorted(ids_in(client, "work")) == sorted(ids)


def test_unknown_queue_and_unreachable_broker_are_one_line_errors(
    db: tuple[str, redis.Redis],
) -> None:
    url, _ = db
    for command in (
        ("list", "nope"),
        ("show", "nope"),
        ("replay", "nope", "--to", "x"),
        ("purge", "nope", "--yes"),
    ):
        done = dlq_cli.run(url, *command)
        assert (done.returncode, done.stderr) == (
            2,
            "celery-vitals: error: no queue 'nope' on the broker\n",
        ), command
    [empty] = dlq_cli.run_json(url, "list", "nope", "--dlq", "nope")  # named: known, if empty
    assert (empty["depth"], empty["tasks"]) == (0, {})
    down = dlq_cli.run("redis://:hunter2-secret@127.0.0.1:1/0", "list", "dead_letter")
    assert down.returncode == 1
    assert down.stderr.startswith(
        "celery-vitals: error: cannot reach the broker at redis://:***@127.0.0.1:1/0"
    )
    assert len(down.stderr.splitlines()) == 1 and "hunter2" not in down.stderr + down.stdout


def test_the_exporter_gauges_dlq_messages_per_task_from_its_poller(
    db: tuple[str, redis.Redis], harness: Harness
) -> None:
    url, client = db
    app = publisher(url)
    dead_letter(app, "dead_letter", "billing.charge", 3)
    dead_letter(app, "dead_letter", "mail.send", 2)
    foreign(client, "dead_letter")
    exporter = harness.exporter(
        url, "--queue-poll-interval", "0.5", "--dlq", "dead_letter", "--no-enable-events"
    )

    def counted(s: Scrape) -> bool:
        return s.get("celery_dlq_messages", queue_name="dead_letter", name="billing.charge") == 3

    s = exporter.wait_for(counted, timeout=30, what="celery_dlq_messages billing.charge 3")
    assert s.get("celery_dlq_messages", queue_name="dead_letter", name="mail.send") == 2
    assert s.get("celery_dlq_length", queue_name="dead_letter") == 8
    assert client.llen("dead_letter") == 8  # sampled, not consumed


def test_a_broker_lost_mid_replay_is_a_one_line_error(harness: Harness, tmp_path: Path) -> None:
    server = harness.redis("lost")
    url = server.url()
    client = redis.Redis.from_url(url)
    dead_letter(publisher(url), "dead_letter", "replay.record", 300)
    process = dlq_cli.spawn(
        url, tmp_path, "replay", "replay", "dead_letter", "--to", "work", "--rate", "50/s"
    )
    wait_until(
        lambda: client.llen("work") > 0,
        timeout=30,
        what="the replay to start",
        details=process.tail,
    )
    server.kill()
    assert process.wait(30) == 1, process.tail()
    output = process.output(latest_start_only=True)
    errors = [line for line in output.splitlines() if line.startswith("celery-vitals: error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert "(broker redis://127.0.0.1:" in errors[0], errors
