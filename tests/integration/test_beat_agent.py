"""The beat agent in a real ``celery beat`` (tests/support/beat_app.py, its schedule:
``every-second`` and ``hourly-report`` intervals, the ``nightly-cleanup`` crontab at 04:30
UTC) and real workers on Redis:

- the default PersistentScheduler (a --schedule file in tmp_path): the entries with their
  exact names, tasks and intervals; last-run timestamps advancing as beat sends; the
  sends matching what the worker's agent received;
- a worker's ``-B``: Celery runs that beat in a child process, which serves on the next
  port of the worker's range, named after the worker;
- the same on every Celery minor of the agent's matrix (5.3 to 5.6, their own venvs);
- django-celery-beat's DatabaseScheduler on SQLite: an interval changed in the
  database while beat runs shows on /metrics within one tick (``--max-interval 1``).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stack.net import LOOPBACK, free_ports, http_get, wait_until
from tests.support import celery_versions
from tests.support.agent_workers import AgentWorkers
from tests.support.beat_processes import BeatProcess
from tests.support.harness import Harness
from tests.support.metrics import Scrape, parse

pytestmark = pytest.mark.integration

APP = "tests.support.beat_app"
ENTRIES = {
    ("every-second", "beat.tick"),
    ("hourly-report", "beat.report"),
    ("nightly-cleanup", "beat.cleanup"),
}
SERVING = re.compile(r"celery-vitals beat agent: serving http://\S+:(\d+)/metrics for (\S+)")


@pytest.fixture
def workers(harness: Harness) -> Iterator[AgentWorkers]:
    started = AgentWorkers(harness.directory)
    yield started
    started.close()


@pytest.fixture
def beats(harness: Harness) -> Iterator[list[BeatProcess]]:
    started: list[BeatProcess] = []
    yield started
    for process in started:
        process.kill()


def entries(s: Scrape, metric: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["entry"], dict(labels)["name"]): value
        for labels, value in s.series(metric).items()
    }


def next_0430(after: float) -> float:
    """The first 04:30 UTC after ``after``: the nightly crontab's next run."""
    moment = datetime.fromtimestamp(after, UTC)
    run = moment.replace(hour=4, minute=30, second=0, microsecond=0)
    if run <= moment:
        run += timedelta(days=1)
    return run.timestamp()


def test_persistent_scheduler_entries_sends_and_the_worker(
    harness: Harness, workers: AgentWorkers, beats: list[BeatProcess], tmp_path: Path
) -> None:
    redis = harness.redis()
    worker = workers.start("beat-worker", redis.url(), app=APP, pool="solo", concurrency=1)
    started = time.time()
    beat = BeatProcess(redis.url(), harness.directory, schedule=tmp_path / "schedule")
    beats.append(beat)
    beat.start()

    s = beat.scrape()
    read = time.time()
    assert s.series("celery_beat_info") == {
        frozenset(
            {
                ("hostname", f"celerybeat@{socket.gethostname()}"),
                ("scheduler", "celery.beat:PersistentScheduler"),
            }
        ): 1.0
    }
    assert "celery_vitals_agent_info" not in set(s.names())  # a beat is no worker
    interval = entries(s, "celery_beat_entry_interval_seconds")
    assert set(interval) == ENTRIES
    assert interval[("every-second", "beat.tick")] == 1.0
    assert interval[("hourly-report", "beat.report")] == 3600.0
    next_run = entries(s, "celery_beat_entry_next_run_timestamp_seconds")
    nightly = next_0430(read)
    # computed as now + remaining_estimate(), whose own clock read is a few us later
    assert next_run[("nightly-cleanup", "beat.cleanup")] == pytest.approx(nightly, abs=0.01)
    # never ran: from the read (between beat's start and this scrape) to 04:30
    assert (
        nightly - read - 0.01
        <= interval[("nightly-cleanup", "beat.cleanup")]
        <= nightly - started + 0.01
    )
    assert started + 3600 <= next_run[("hourly-report", "beat.report")] <= read + 3600
    assert set(entries(s, "celery_beat_entry_sent_total")) == ENTRIES

    # every-second: each send moves its last run, and its next run a second after it
    tick = ("every-second", "beat.tick")
    seen: list[float] = []

    def sent_again(s: Scrape) -> bool:
        last = entries(s, "celery_beat_entry_last_run_timestamp_seconds").get(tick)
        if last is not None and (not seen or last > seen[-1]):
            seen.append(last)
        return len(seen) >= 3

    s = beat.wait_for(sent_again, what="three successive last runs of every-second")
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert started < seen[0] and seen[-1] <= time.time()
    last = entries(s, "celery_beat_entry_last_run_timestamp_seconds")
    assert set(last) == {tick}  # the hourly and nightly entries have not run
    assert entries(s, "celery_beat_entry_next_run_timestamp_seconds")[tick] == pytest.approx(
        last[tick] + 1.0, abs=0.01
    )

    # what beat says it sent is what the worker received: both counters agree between sends
    counts: list[tuple[float, float]] = []

    def agree() -> bool:
        sent = entries(beat.scrape(), "celery_beat_entry_sent_total")[tick]
        received = worker.scrape().value(
            "celery_task_received_total", name="beat.tick", queue_name="celery"
        )
        counts.append((sent, received))
        return sent >= 5 and sent == received

    wait_until(
        agree,
        timeout=30,
        what="beat's sends and the worker's receipts to agree",
        details=lambda: f"(sent, received): {counts[-10:]}",
    )
    sent = counts[-1][0]
    log_sends = beat.output().count("Scheduler: Sending due task every-second (beat.tick)")
    assert log_sends >= sent  # beat logs each send before the agent counts it
    s = beat.scrape()
    assert s.value("celery_vitals_beat_agent_errors_total", part="entry") == 0
    assert s.value("celery_vitals_beat_agent_errors_total", part="snapshot") == 0
    assert s.value("celery_vitals_beat_agent_errors_total", part="send") == 0


def test_a_workers_embedded_beat_serves_on_the_next_port_of_its_range(
    harness: Harness, workers: AgentWorkers, tmp_path: Path
) -> None:
    redis = harness.redis()
    first, second = free_ports(2)
    worker = workers.start(
        "embedded",
        redis.url(),
        app=APP,
        pool="prefork",
        concurrency=1,
        address=f"{LOOPBACK}:{first}-{second}",
        extra_args=["-B", "--schedule", str(tmp_path / "schedule")],
    )
    assert worker.port == first  # the worker's agent: the range's first port

    def beat_port() -> int | None:
        for match in SERVING.finditer(worker.log()):
            if match.group(2) == worker.hostname:
                return int(match.group(1))
        return None

    port = wait_until(
        beat_port, timeout=30, what="the embedded beat's serving line", details=worker.tail
    )
    assert port == second
    samples = parse(http_get(second, "/metrics").text)
    info = {labels: v for (name, labels), v in samples.items() if name == "celery_beat_info"}
    assert info == {
        frozenset(
            {("hostname", worker.hostname), ("scheduler", "celery.beat:PersistentScheduler")}
        ): 1.0
    }
    assert {
        (dict(labels)["entry"], dict(labels)["name"])
        for (name, labels) in samples
        if name == "celery_beat_entry_interval_seconds"
    } == ENTRIES
    # the worker's own /metrics: no schedule there, the beat runs in another process
    assert not worker.scrape().series("celery_beat_info")
    # the embedded beat's sends reach its worker
    worker.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", name="beat.tick", queue_name="celery") >= 2
        ),
        what="the worker running what its beat sent",
    )


def test_database_scheduler_follows_an_interval_changed_while_beat_runs(
    harness: Harness, beats: list[BeatProcess], tmp_path: Path
) -> None:
    pytest.importorskip("django_celery_beat")
    from tests.support import beat_django

    db = tmp_path / "beat.sqlite3"
    beat_django.run(db, "migrate")
    beat_django.run(db, "every", "db-every-two", "beat.tick", "2")
    beat_django.run(db, "every", "db-hourly", "beat.report", "3600")
    redis = harness.redis()
    beat = BeatProcess(
        redis.url(),
        harness.directory,
        scheduler="django_celery_beat.schedulers:DatabaseScheduler",
        extra_env={"BEAT_DJANGO": "1", "BEAT_DJANGO_DB": str(db)},
    )
    beats.append(beat)
    beat.start()

    s = beat.scrape()
    assert s.series("celery_beat_info") == {
        frozenset(
            {
                ("hostname", f"celerybeat@{socket.gethostname()}"),
                ("scheduler", "django_celery_beat.schedulers:DatabaseScheduler"),
            }
        ): 1.0
    }
    assert entries(s, "celery_beat_entry_interval_seconds") == {
        ("db-every-two", "beat.tick"): 2.0,
        ("db-hourly", "beat.report"): 3600.0,
    }
    key = ("db-every-two", "beat.tick")
    first = beat.wait_for(
        lambda s: entries(s, "celery_beat_entry_sent_total").get(key, 0) >= 2,
        what="two sends of db-every-two",
    )
    last = entries(first, "celery_beat_entry_last_run_timestamp_seconds")[key]
    # the DatabaseScheduler keeps the entry it loaded: the next run follows this process' sends
    assert entries(first, "celery_beat_entry_next_run_timestamp_seconds")[key] == pytest.approx(
        last + 2.0, abs=0.01
    )

    beat_django.run(db, "every", "db-every-two", "beat.tick", "7")
    changed = time.monotonic()
    beat.wait_for(
        lambda s: entries(s, "celery_beat_entry_interval_seconds").get(key) == 7.0,
        what="the interval changed in the database",
    )
    took = time.monotonic() - changed
    # one tick is at most --max-interval (1 s), the scrape poll 0.1 s: typically 0.1 s here
    # (an entry every 2 s makes beat tick often); 3 s leaves a loaded host its slack
    assert took < 3.0, f"the change showed after {took:.2f}s"
    s = beat.scrape()
    assert entries(s, "celery_beat_entry_interval_seconds") == {
        ("db-every-two", "beat.tick"): 7.0,
        ("db-hourly", "beat.report"): 3600.0,
    }
    assert "DatabaseScheduler: Schedule changed." in beat.output()
    assert s.value("celery_vitals_beat_agent_errors_total", part="snapshot") == 0
    assert s.value("celery_vitals_beat_agent_errors_total", part="entry") == 0


@pytest.mark.parametrize("minor", list(celery_versions.LOCKS), ids=lambda m: f"celery{m}")
def test_the_beat_agent_on_each_celery_minor(
    minor: str, harness: Harness, beats: list[BeatProcess], tmp_path: Path
) -> None:
    venv = celery_versions.ensure(minor)
    redis = harness.redis()
    beat = BeatProcess(
        redis.url(),
        harness.directory,
        schedule=tmp_path / "schedule",
        celery=venv.executable("celery"),
    )
    beats.append(beat)
    beat.start()
    tick = ("every-second", "beat.tick")
    s = beat.wait_for(
        lambda s: entries(s, "celery_beat_entry_sent_total").get(tick, 0) >= 2,
        what=f"two sends of every-second on Celery {minor}",
    )
    assert f"celery beat v{venv.version}" in beat.output()
    assert set(entries(s, "celery_beat_entry_interval_seconds")) == ENTRIES
    assert entries(s, "celery_beat_entry_interval_seconds")[tick] == 1.0
    last = entries(s, "celery_beat_entry_last_run_timestamp_seconds")
    assert set(last) == {tick}
    assert entries(s, "celery_beat_entry_next_run_timestamp_seconds")[tick] == pytest.approx(
        last[tick] + 1.0, abs=0.01
    )
    assert s.series("celery_beat_info") == {
        frozenset(
            {
                ("hostname", f"celerybeat@{socket.gethostname()}"),
                ("scheduler", "celery.beat:PersistentScheduler"),
            }
        ): 1.0
    }
