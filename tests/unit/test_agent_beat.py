"""The beat agent without a broker: what it reads from a real Celery Scheduler (interval,
crontab and solar entries on a fixed clock), the fold past its cap, broken entries and a
broken schedule counted while beat ticks on, and the /metrics it renders."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.beat import Scheduler
from celery.schedules import crontab, schedule, solar

from celery_vitals.agent import beat
from celery_vitals.catalogue import BY_NAME
from celery_vitals.exposition import Exposition
from celery_vitals.labels import OTHER
from tests.support.metrics import parse

NOW = datetime(2026, 3, 20, 12, 0, 0, tzinfo=UTC)  # a fixed clock: every value is exact
T = NOW.timestamp()
GREENWICH = (51.4769, 0.0)


class QuietScheduler(Scheduler):
    """Celery's own Scheduler (tick, heap, reserve, apply_entry, apply_async), publishing
    nothing: the tasks are unregistered, so apply_async ends in send_task."""

    published: list[str]

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.published.append(name)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("beat-unit", broker="memory://", set_as_current=False)
    app.conf.update(timezone="UTC", result_expires=None)
    app.now = lambda: NOW  # type: ignore[method-assign]  # every schedule's clock
    yield app
    app.close()


def scheduler(app: Celery, entries: dict[str, dict[str, Any]]) -> QuietScheduler:
    app.conf.beat_schedule = entries
    made = QuietScheduler(app)
    made.published = []
    return made


def take(state: beat.BeatSchedule, made: Scheduler) -> beat.Snapshot:
    """What a tick takes, as /metrics computes it."""
    state.take(made.schedule)
    snapshot = state.snapshot
    assert snapshot is not None
    return snapshot


def ran(made: Scheduler, name: str, at: datetime, count: int) -> None:
    entry = made.schedule[name]
    entry.last_run_at, entry.total_run_count = at, count


def test_interval_crontab_and_solar_entries_on_a_fixed_clock(app: Celery) -> None:
    made = scheduler(
        app,
        {
            "ten-minutes": {"task": "jobs.poll", "schedule": timedelta(minutes=10)},
            "seconds-as-a-number": {"task": "jobs.ping", "schedule": 30.0},
            "nightly": {"task": "jobs.cleanup", "schedule": crontab(minute="30", hour="4")},
            "evening": {"task": "jobs.report", "schedule": crontab(minute="0", hour="18")},
            "sunrise": {"task": "jobs.lights", "schedule": solar("sunrise", *GREENWICH, app=app)},
        },
    )
    ran(made, "ten-minutes", NOW - timedelta(minutes=4), 3)
    ran(made, "nightly", datetime(2026, 3, 20, 4, 30, tzinfo=UTC), 1)
    # today's sunrise at Greenwich, as ephem computes it (06:02:53 UTC on 2026-03-20)
    ran(made, "sunrise", datetime(2026, 3, 20, 6, 2, 53, 260578, tzinfo=UTC), 7)
    state = beat.BeatSchedule(clock=lambda: T)

    rows = take(state, made).rows

    assert rows == {
        ("ten-minutes", "jobs.poll"): beat.Row(600.0, T + 360, T - 240, 0),
        # never ran: last_run_at is when the entry was made (now); no last run
        ("seconds-as-a-number", "jobs.ping"): beat.Row(30.0, T + 30, None, 0),
        ("nightly", "jobs.cleanup"): beat.Row(
            86400.0, datetime(2026, 3, 21, 4, 30, tzinfo=UTC).timestamp(), T - 27000, 0
        ),
        # a crontab that never ran: from now to its next run (18:00 today)
        ("evening", "jobs.report"): beat.Row(21600.0, T + 21600, None, 0),
        ("sunrise", "jobs.lights"): beat.Row(
            datetime(2026, 3, 21, 6, 0, 36, 592616, tzinfo=UTC).timestamp()
            - datetime(2026, 3, 20, 6, 2, 53, 260578, tzinfo=UTC).timestamp(),
            datetime(2026, 3, 21, 6, 0, 36, 592616, tzinfo=UTC).timestamp(),
            datetime(2026, 3, 20, 6, 2, 53, 260578, tzinfo=UTC).timestamp(),
            0,
        ),
    }
    assert state.errors == {"entry": 0, "snapshot": 0, "send": 0}
    # read again unchanged (what most ticks do): the same values, from the previous read
    assert take(state, made).rows == rows
    ran(made, "ten-minutes", NOW - timedelta(minutes=1), 4)  # sent meanwhile: read anew
    assert take(state, made).rows[("ten-minutes", "jobs.poll")] == beat.Row(
        600.0, T + 540, T - 60, 0
    )


def test_sends_are_counted_and_read_after_each_tick(app: Celery) -> None:
    made = scheduler(app, {"minute": {"task": "jobs.poll", "schedule": timedelta(minutes=1)}})
    ran(made, "minute", NOW - timedelta(minutes=5), 2)  # overdue: the next tick sends it
    sent_at = T + 0.25
    state = beat.BeatSchedule(clock=lambda: sent_at)
    monotonic = iter(range(1000))
    beat.hook(made, state, clock=lambda: float(next(monotonic)))
    assert state.snapshot is not None  # read once at hook time
    assert state.snapshot.rows[("minute", "jobs.poll")] == beat.Row(60.0, T - 240, T - 300, 0)

    assert made.tick() == 0  # sent; the clock moved a second: read again
    assert made.published == ["jobs.poll"]
    # the send: the scheduler's last_run_at is now (reserve), this process' send a bit later
    assert state.snapshot.rows[("minute", "jobs.poll")] == beat.Row(60.0, sent_at + 60, sent_at, 1)
    assert made.schedule["minute"].total_run_count == 3
    assert made.tick() == pytest.approx(60.0, abs=0.02)  # nothing due: beat sleeps
    assert made.published == ["jobs.poll"]
    assert state.errors == {"entry": 0, "snapshot": 0, "send": 0}


class Broken(schedule):
    """An entry whose schedule cannot say when it runs next."""

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise RuntimeError("no next run")

    def is_due(self, last_run_at: datetime) -> Any:
        return (False, 5.0)


def test_a_broken_entry_is_counted_and_the_others_are_served(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    made = scheduler(
        app,
        {
            "fine": {"task": "jobs.poll", "schedule": timedelta(minutes=10)},
            "broken": {"task": "jobs.broken", "schedule": Broken(timedelta(minutes=1))},
        },
    )
    ran(made, "broken", NOW - timedelta(minutes=3), 4)
    state = beat.BeatSchedule()
    with caplog.at_level(logging.WARNING, logger=beat.__name__):
        rows = take(state, made).rows
        rows = take(state, made).rows  # counted at every read, logged once a minute

    assert rows[("fine", "jobs.poll")] == beat.Row(600.0, T + 600, None, 0)
    assert rows[("broken", "jobs.broken")] == beat.Row(None, None, T - 180, 0)  # last run only
    assert state.errors["entry"] == 2
    assert [r.getMessage() for r in caplog.records] == [
        "celery-vitals beat agent: cannot read the schedule of entry 'broken' (beat goes on)"
    ]


def test_a_schedule_that_cannot_be_read_never_stops_beat(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = scheduler(app, {"minute": {"task": "jobs.poll", "schedule": timedelta(minutes=1)}})
    state = beat.BeatSchedule()
    beat.hook(made, state)
    first = state.snapshot

    def unreadable(schedule: object) -> beat.Snapshot:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(state, "take", unreadable)
    assert made.tick() == pytest.approx(60.0, abs=0.02)  # beat ticks on
    assert made.tick() == pytest.approx(60.0, abs=0.02)
    assert state.snapshot is first  # the last read is served
    assert state.errors["snapshot"] == 2


def test_entries_past_the_cap_fold_into_other(app: Celery) -> None:
    made = scheduler(
        app,
        {
            name: {"task": task, "schedule": timedelta(seconds=every)}
            for name, task, every in (
                ("a", "jobs.poll", 60),
                ("b", "jobs.poll", 120),
                ("c", "jobs.poll", 300),
                ("d", "jobs.poll", 30),
                ("e", "jobs.other", 10),
            )
        },
    )
    ran(made, "c", NOW - timedelta(seconds=100), 1)
    ran(made, "d", NOW - timedelta(seconds=10), 1)
    state = beat.BeatSchedule(max_entries=2)
    state.sent.update({"c": 2, "d": 3})

    rows = take(state, made).rows
    assert rows == {
        ("a", "jobs.poll"): beat.Row(60.0, T + 60, None, 0),
        ("b", "jobs.poll"): beat.Row(120.0, T + 120, None, 0),
        # c and d: the loosest interval, the earliest next run, the latest run, all sends
        (OTHER, "jobs.poll"): beat.Row(300.0, T + 20, T - 10, 5),
        (OTHER, "jobs.other"): beat.Row(10.0, T + 10, None, 0),
    }
    assert state.entries.folded == {"cap": 3}  # each folded entry once...
    take(state, made)
    assert state.entries.folded == {"cap": 3}  # ...not at every read

    del made.schedule["a"]  # a place frees: the next entry in name order takes it
    rows = take(state, made).rows
    assert set(rows) == {
        ("b", "jobs.poll"),
        ("c", "jobs.poll"),
        (OTHER, "jobs.poll"),
        (OTHER, "jobs.other"),
    }
    assert state.entries.folded == {"cap": 3}


def test_unusable_entry_names_fold() -> None:
    labels = beat.EntryLabels(cap=10, max_length=20)
    assert labels.assign(["fine", "x" * 21, "tab\there", ""]) == {
        "fine": "fine",
        "x" * 21: OTHER,
        "tab\there": OTHER,
        "": OTHER,
    }
    assert labels.folded == {"too_long": 1, "unprintable": 1, "not_a_string": 1}


def test_the_collector_renders_the_contract(app: Celery) -> None:
    made = scheduler(
        app,
        {
            "nightly": {"task": "jobs.cleanup", "schedule": crontab(minute="30", hour="4")},
            "minute": {"task": "jobs.poll", "schedule": timedelta(minutes=1)},
        },
    )
    ran(made, "nightly", datetime(2026, 3, 20, 4, 30, tzinfo=UTC), 1)
    state = beat.BeatSchedule(max_entries=1)
    state.take(made.schedule)
    collector = beat.BeatCollector(state, "celerybeat@host", beat.scheduler_name(made))
    text = Exposition([collector], constant_labels={"broker": "redis://r:6379/0"}).render()
    samples = parse(text.decode())

    def series(metric: str, **labels: str) -> float | None:
        return samples.get((metric, frozenset(labels.items())))

    assert series(
        "celery_beat_info",
        hostname="celerybeat@host",
        scheduler="tests.unit.test_agent_beat:QuietScheduler",
    ) == (1.0)
    # a cap of 1: "minute" comes first in name order, "nightly" is folded
    assert series("celery_beat_entry_interval_seconds", entry="minute", name="jobs.poll") == 60
    assert series("celery_beat_entry_interval_seconds", entry=OTHER, name="jobs.cleanup") == 86400
    assert (
        series("celery_beat_entry_last_run_timestamp_seconds", entry="minute", name="jobs.poll")
        is None
    )
    assert series("celery_beat_entry_sent_total", entry="minute", name="jobs.poll") == 0
    assert series("celery_vitals_label_values_folded_total", label="entry", reason="cap") == 1
    assert series("celery_vitals_beat_agent_errors_total", part="entry") == 0
    assert b'broker="redis://r:6379/0"' in text
    names = {name for name, _ in samples}
    assert names <= {n for spec in BY_NAME.values() for n in spec.series_names}


# -- beat_init: where the agent serves ----------------------------------------------


@pytest.fixture
def process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The agent module's per-process state, restored after the test (and the beat's
    HTTP server stopped)."""
    from celery_vitals import agent as agent_module

    state = agent_module._process
    monkeypatch.setattr(state, "agent", None)
    monkeypatch.setattr(state, "beat", None)
    monkeypatch.setattr(state, "worker_hostname", None)
    monkeypatch.setattr(agent_module, "_installed", [])
    monkeypatch.delenv(agent_module.WEB_CONFIG_ENV, raising=False)
    monkeypatch.delenv(agent_module.MAX_BEAT_ENTRIES_ENV, raising=False)
    yield agent_module
    if state.beat is not None and state.beat.http is not None:
        state.beat.http.stop()


def service(app: Celery, made: Scheduler) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(app=app, scheduler=made, hostname=None)


def test_celery_beat_serves_its_schedule_on_its_own_port(
    app: Celery, process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.utils.nodenames import gethostname

    from stack.net import LOOPBACK, free_port, http_get

    port = free_port()
    monkeypatch.setenv(process.LISTEN_ADDRESS_ENV, f"{LOOPBACK}:{port}")
    made = scheduler(app, {"minute": {"task": "jobs.poll", "schedule": timedelta(minutes=1)}})
    process._installed.append((app, None))
    process._on_beat_init(sender=service(app, made))

    assert process._process.beat is not None
    assert http_get(port, "/readyz").status == 200
    samples = parse(http_get(port, "/metrics").text)
    assert (
        samples[
            (
                "celery_beat_info",
                frozenset(
                    {
                        ("hostname", f"celerybeat@{gethostname()}"),
                        ("scheduler", "tests.unit.test_agent_beat:QuietScheduler"),
                    }
                ),
            )
        ]
        == 1.0
    )
    key = frozenset({("entry", "minute"), ("name", "jobs.poll")})
    assert samples[("celery_beat_entry_interval_seconds", key)] == 60.0
    assert samples[("celery_beat_entry_next_run_timestamp_seconds", key)] == T + 60
    assert not any(name == "celery_vitals_agent_info" for name, _ in samples)
    # hooked: a tick that sends is counted and read
    ran(made, "minute", NOW - timedelta(minutes=2), 1)
    made.tick()
    made.tick()
    samples = parse(http_get(port, "/metrics").text)
    assert samples[("celery_beat_entry_sent_total", key)] == 1.0


def test_a_bad_setting_is_one_warning_and_beat_runs_without_the_agent(
    app: Celery, process: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(process.MAX_BEAT_ENTRIES_ENV, "lots")
    made = scheduler(app, {"minute": {"task": "jobs.poll", "schedule": timedelta(minutes=1)}})
    tick = made.tick
    process._installed.append((app, None))
    with caplog.at_level(logging.WARNING, logger=process.__name__):
        process._on_beat_init(sender=service(app, made))
    assert process._process.beat is None
    assert made.tick == tick  # not hooked
    assert [r.getMessage() for r in caplog.records] == [
        "celery-vitals beat agent not started, beat runs without its /metrics: "
        "CELERY_VITALS_AGENT_MAX_BEAT_ENTRIES: expected a positive whole number, got 'lots'"
    ]


def test_a_beat_thread_inside_a_worker_serves_on_the_workers_agent(
    app: Celery, process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where Celery embeds beat as a thread (no multiprocessing), the worker's agent serves
    its schedule, named after the worker, and counts its folded entries."""
    from types import SimpleNamespace

    from stack.net import LOOPBACK, free_port, http_get

    port = free_port()
    monkeypatch.setenv(process.LISTEN_ADDRESS_ENV, f"{LOOPBACK}:{port}")
    monkeypatch.setenv(process.MAX_BEAT_ENTRIES_ENV, "1")
    worker = SimpleNamespace(hostname="w1@host", pool_cls="solo", app=app, pool=None)
    worker_agent = process.Agent.from_environment(worker)
    worker_agent.start()
    try:
        monkeypatch.setattr(process._process, "agent", worker_agent)
        process._process.worker_hostname = "w1@host"
        made = scheduler(
            app,
            {
                "a": {"task": "jobs.poll", "schedule": timedelta(minutes=1)},
                "b": {"task": "jobs.poll", "schedule": timedelta(minutes=2)},
            },
        )
        process._installed.append((app, None))
        process._on_beat_init(sender=service(app, made))
        assert process._process.beat is not None and process._process.beat.http is None
        samples = parse(http_get(port, "/metrics").text)
    finally:
        worker_agent.stop()
    info = frozenset({("hostname", "w1@host"), ("scheduler", beat.scheduler_name(made))})
    assert samples[("celery_beat_info", info)] == 1.0
    assert (
        samples[
            ("celery_vitals_agent_info", frozenset({("hostname", "w1@host"), ("pool", "solo")}))
        ]
        == 1.0
    )
    a = frozenset({("entry", "a"), ("name", "jobs.poll")})
    folded = frozenset({("entry", OTHER), ("name", "jobs.poll")})
    assert samples[("celery_beat_entry_interval_seconds", a)] == 60.0
    assert samples[("celery_beat_entry_interval_seconds", folded)] == 120.0
    assert (
        samples[
            (
                "celery_vitals_label_values_folded_total",
                frozenset({("label", "entry"), ("reason", "cap")}),
            )
        ]
        == 1.0
    )
