"""The beat agent: ``celery beat``'s schedule on /metrics, from inside beat.

The same one line as the worker's agent (``celery_vitals.agent.install(app)``)
makes ``celery beat``, and the beat a worker embeds with ``-B``, serve what
its scheduler holds: one series per schedule entry (its task, the expected
time between runs, its next run, its last send) and the sends of this
process. It reads the running scheduler through Celery's scheduler API
(``Service.scheduler``; ``scheduler.schedule``, a mapping of entries with
``name``, ``task``, ``last_run_at``, ``total_run_count`` and ``schedule``,
whose ``remaining_estimate()`` gives the next run), so the default
``PersistentScheduler``, django-celery-beat's ``DatabaseScheduler`` and other
schedulers built on Celery's ``Scheduler`` are read alike.

Threads: the schedule is taken on beat's own thread, right after each
``tick()`` of the scheduler (a ``DatabaseScheduler`` reloads its entries
there when they changed, and its Django connection belongs to that thread):
each entry's fields, copied into an immutable object that replaces the last
one whole. Sends are counted where the scheduler sends them (``apply_async``,
which every send of Celery 5.3 to 5.7 goes through, ``apply_entry``
included). The HTTP thread computes the rows from the last take, once per
take (each entry's next run, by its schedule's own date arithmetic, again
only for the entries that changed), so that a tick pays microseconds. A
failure in here never reaches beat: it is logged (rate-limited) and counted
in ``celery_vitals_beat_agent_errors_total{part}``, and beat ticks on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from celery_vitals.catalogue import build_info, counter, gauge, info
from celery_vitals.labels import OTHER, LabelGuard
from celery_vitals.logs import RateLimitedLogger

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "BeatCollector",
    "BeatSchedule",
    "EntryLabels",
    "Row",
    "Snapshot",
    "Taken",
    "hook",
    "scheduler_name",
]

DEFAULT_MAX_ENTRIES = 1000
#: a burst of due entries makes tick() return 0 after each send: the schedule is then
#: read again only when beat is about to sleep, or after this many seconds
SNAPSHOT_EVERY_IN_A_BURST = 1.0
ERROR_PARTS = ("entry", "snapshot", "send")

log = logging.getLogger(__name__)
rate_limited = RateLimitedLogger(log)


@dataclass(frozen=True)
class Row:
    """The series of one ``(entry, name)`` label pair (several entries when folded)."""

    interval: float | None
    next_run: float | None
    last_run: float | None
    sent: int


@dataclass(frozen=True)
class Snapshot:
    """The schedule as read at one tick: rows by ``(entry, name)`` label values."""

    rows: Mapping[tuple[str, str], Row]
    taken: float  # unix time


class EntryLabels:
    """The ``entry`` label's cardinality guard, for a schedule read whole at every tick.

    Unlike LabelGuard (whose admitted values live as long as the process), an
    entry that left the schedule frees its place: a DatabaseScheduler's entries
    come and go. Admitted entries keep their series; entries past ``cap`` (in
    name order at the first read, then in order of appearance) become
    ``other``, as do names that are not printable strings of at most
    ``max_length``. ``folded`` counts each entry once when it is folded (by
    reason), again only if it was shown in between: it feeds
    ``celery_vitals_label_values_folded_total{label="entry"}``.
    """

    label = "entry"

    def __init__(self, cap: int, max_length: int = 200) -> None:
        self.cap = cap
        self.max_length = max_length
        self.admitted: dict[str, None] = {}  # ordered: first admitted first
        self.folded: dict[str, int] = {}
        self._folded_now: set[tuple[object, str]] = set()

    def assign(self, names: Iterable[object]) -> dict[object, str]:
        """Entry name -> its label value, for every name of one read of the schedule."""
        every = list(names)
        present = set(every)
        for gone in [name for name in self.admitted if name not in present]:
            del self.admitted[gone]
        labels: dict[object, str] = {}
        folded_now: set[tuple[object, str]] = set()
        for name in sorted(every, key=str):
            reason = self._reason(name)
            if reason is None and isinstance(name, str):
                labels[name] = name
                continue
            labels[name] = OTHER
            folded_now.add((name, reason or "not_a_string"))
        for _, reason in folded_now - self._folded_now:
            self.folded[reason] = self.folded.get(reason, 0) + 1
        self._folded_now = folded_now
        return labels

    def _reason(self, name: object) -> str | None:
        if not isinstance(name, str) or not name:
            return "not_a_string"
        if len(name) > self.max_length:
            return "too_long"
        if not name.isprintable():
            return "unprintable"
        if name in self.admitted:
            return None
        if len(self.admitted) >= self.cap:
            return "cap"
        self.admitted[name] = None
        return None


@dataclass(frozen=True)
class _Read:
    """What one read of an entry found (``every``: its fixed interval, if it has one)."""

    interval: float
    next_run: float
    last_run: float | None
    every: float | None


@dataclass
class _Folding:
    """Several entries under one ``(entry, name)``: the loosest interval, the earliest
    next run, the latest send, the sum of sends."""

    interval: float | None = None
    next_run: float | None = None
    last_run: float | None = None
    sent: int = 0

    def add(self, interval: float | None, next_run: float | None, last: float | None) -> None:
        if interval is not None:
            self.interval = interval if self.interval is None else max(self.interval, interval)
        if next_run is not None:
            self.next_run = next_run if self.next_run is None else min(self.next_run, next_run)
        if last is not None:
            self.last_run = last if self.last_run is None else max(self.last_run, last)

    def row(self) -> Row:
        return Row(self.interval, self.next_run, self.last_run, self.sent)


@dataclass(frozen=True)
class Taken:
    """One read of the schedule on beat's thread: each entry's fields as they were then
    (name, task, schedule, last_run_at, total_run_count), and the sends so far."""

    entries: tuple[tuple[object, Any, Any, Any, Any], ...]
    sent: Mapping[object, int]
    sent_at: Mapping[object, float]
    at: float  # unix time


class BeatSchedule:
    """What the agent knows of one running scheduler: on beat's thread, sends counted as
    they happen and the schedule taken at each tick (``take``: the entries' fields, no
    arithmetic); for /metrics, the rows computed from the last take (``snapshot``).

    The arithmetic (each entry's next run, from Celery's date code) is left to the
    scrape, once per take, and done again only for the entries that changed: a tick
    pays a few microseconds per entry, a scrape a few more.

    ``task_names`` guards the ``name`` label (the worker pipeline's guard when beat runs
    inside a worker's process, else one of its own); ``clock`` is the send clock.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        task_names: LabelGuard | None = None,
        max_label_length: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.entries = EntryLabels(max_entries, max_label_length)
        self.task_names = task_names or LabelGuard("name", 500, max_label_length)
        self.clock = clock
        self.sent: dict[object, int] = {}  # entry name -> sends by this process
        self.sent_at: dict[object, float] = {}  # entry name -> unix time of its last send
        self.errors: dict[str, int] = dict.fromkeys(ERROR_PARTS, 0)
        self.taken: Taken | None = None  # replaced whole on beat's thread
        self._computed: tuple[Taken, Snapshot] | None = None
        self._computing = threading.Lock()  # one computation at a time (scrapes, tests)
        # entry name -> (schedule, last_run_at, total_run_count, send time) it was read with,
        # and what was read: an entry that did not change is not computed again
        self._read_before: dict[object, tuple[Any, Any, Any, Any, _Read]] = {}

    # -- on beat's thread --------------------------------------------------------

    def count_send(self, entry: Any) -> None:
        """apply_async sent ``entry``: never raises."""
        try:
            name = entry.name
            self.sent[name] = self.sent.get(name, 0) + 1
            self.sent_at[name] = self.clock()
        except Exception:
            self.failed("send", "could not count a send of %r", entry)

    def take(self, schedule: Mapping[Any, Any]) -> Taken:
        """Takes every entry of ``schedule`` (the scheduler's ``schedule``) as it is now:
        /metrics shows it from then on."""
        entries = tuple(
            (
                getattr(entry, "name", None) or key,
                getattr(entry, "task", None),
                getattr(entry, "schedule", None),
                getattr(entry, "last_run_at", None),
                getattr(entry, "total_run_count", None),
            )
            for key, entry in schedule.items()
        )
        if len(entries) < len(self.sent):  # entries left the schedule: their sends go
            present = {entry[0] for entry in entries}
            for gone in [name for name in self.sent if name not in present]:
                del self.sent[gone]
                self.sent_at.pop(gone, None)
        taken = Taken(entries, dict(self.sent), dict(self.sent_at), time.time())
        self.taken = taken
        return taken

    # -- for /metrics --------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The rows of the last take (computed once per take); None before the first."""
        taken = self.taken
        if taken is None:
            return None
        with self._computing:
            computed = self._computed
            if computed is not None and computed[0] is taken:
                return computed[1]
            snapshot = self._compute(taken)
            self._computed = (taken, snapshot)
            return snapshot

    def _compute(self, taken: Taken) -> Snapshot:
        labels = self.entries.assign(entry[0] for entry in taken.entries)
        folding: dict[tuple[str, str], _Folding] = {}
        for name, task, schedule, last_run_at, runs in taken.entries:
            key = (labels[name], self.task_names(task))
            values = folding.get(key)
            if values is None:
                values = folding[key] = _Folding()
            values.add(*self._read(name, schedule, last_run_at, runs, taken.sent_at.get(name)))
            values.sent += taken.sent.get(name, 0)
        if len(self._read_before) > len(taken.entries):
            present = {entry[0] for entry in taken.entries}
            for gone in [name for name in self._read_before if name not in present]:
                del self._read_before[gone]
        return Snapshot({key: values.row() for key, values in folding.items()}, taken.at)

    def _read(
        self, name: object, schedule: Any, last_run_at: Any, runs: Any, sent_at: float | None
    ) -> tuple[float | None, float | None, float | None]:
        """(interval, next run, last run) of one entry; what its schedule cannot tell is
        None, counted in errors["entry"].

        An entry's next run depends on its schedule and its last run only (a
        schedule's ``remaining_estimate`` is that next run minus now), so an entry
        whose schedule object, ``last_run_at``, run count and send time are those
        of the previous read is not computed again: a few microseconds per entry
        then, not the ~50-100 of Celery's date arithmetic.
        """
        last_run: float | None = None
        try:
            runs = runs or 0
            before = self._read_before.get(name)
            if (
                before is not None
                and before[0] is schedule
                and before[1] is last_run_at
                and before[2] == runs
                and before[3] == sent_at
            ):
                read = before[4]
                if read.every is None and read.last_run is None:  # first run: from now on
                    return read.next_run - self.clock(), read.next_run, None
                return read.interval, read.next_run, read.last_run
            # the time beat last sent it: the entry's own (persisted, so from before this
            # process too) once it has run, or this process' send if later (a
            # DatabaseScheduler keeps the entry it loaded and records sends on its model)
            since = _aware(schedule, last_run_at)
            if runs > 0:
                last_run = since.timestamp()
            if sent_at is not None and (last_run is None or sent_at > last_run):
                last_run = sent_at
                since = datetime.fromtimestamp(sent_at, UTC).astimezone(since.tzinfo)
            now = _aware(schedule, schedule.now())
            next_run = (now + schedule.remaining_estimate(since)).timestamp()
            every = _run_every(schedule)
            if every is not None:
                interval = every
            else:  # crontab, solar, ...: the gap between the last (or now) and the next run
                interval = next_run - (last_run if last_run is not None else now.timestamp())
            if not (math.isfinite(next_run) and math.isfinite(interval)):
                raise ValueError(f"next run {next_run!r}, interval {interval!r}")
        except Exception:
            self._read_before.pop(name, None)
            self.failed("entry", "cannot read the schedule of entry %r", name)
            return None, None, last_run
        self._read_before[name] = (
            schedule,
            last_run_at,
            runs,
            sent_at,
            _Read(interval, next_run, last_run, every),
        )
        return interval, next_run, last_run

    def failed(self, part: str, message: str, *args: object) -> None:
        """Counted and logged (at most once a minute per part); never raises."""
        self.errors[part] = self.errors.get(part, 0) + 1
        rate_limited.warn_every(
            f"beat-{part}",
            "celery-vitals beat agent: " + message + " (beat goes on)",
            *args,
            exc_info=True,
        )


def _aware(schedule: Any, moment: datetime) -> datetime:
    """A datetime as the schedule itself reads it (naive as UTC), in the app's timezone:
    a crontab counts hours and weekdays there (as beat's schedulers pass it)."""
    aware: datetime = schedule.maybe_make_aware(moment)
    tz = getattr(schedule, "tz", None)
    return aware.astimezone(tz) if tz is not None else aware


def _run_every(schedule: Any) -> float | None:
    """The fixed interval of a ``celery.schedules.schedule`` (a timedelta or a number of
    seconds in beat_schedule), else None."""
    from celery.schedules import schedule as interval_schedule

    if isinstance(schedule, interval_schedule):
        every = schedule.run_every
        if isinstance(every, timedelta):
            return every.total_seconds()
    return None


# -- the hooks ------------------------------------------------------------------


def hook(scheduler: Any, state: BeatSchedule, clock: Callable[[], float] = time.monotonic) -> None:
    """Wraps the scheduler's ``tick`` (the schedule is read after it, on beat's thread) and
    ``apply_async`` (each send counted) on the instance; takes the first snapshot now."""
    tick = scheduler.tick
    apply_async = scheduler.apply_async
    last = [clock()]

    def read() -> None:
        try:
            state.take(scheduler.schedule)
        except Exception:
            state.failed("snapshot", "cannot read the schedule; /metrics shows the last read")
        last[0] = clock()

    def tick_and_read(*args: Any, **kwargs: Any) -> Any:
        interval = tick(*args, **kwargs)
        try:
            resting = not isinstance(interval, (int, float)) or interval > 0
            if resting or clock() - last[0] >= SNAPSHOT_EVERY_IN_A_BURST:
                read()
        except Exception:  # pragma: no cover - read() catches; a broken clock does not
            state.failed("snapshot", "cannot read the schedule after a tick")
        return interval

    def apply_async_counted(entry: Any, *args: Any, **kwargs: Any) -> Any:
        result = apply_async(entry, *args, **kwargs)
        state.count_send(entry)
        return result

    tick_and_read.__wrapped__ = tick  # type: ignore[attr-defined]
    apply_async_counted.__wrapped__ = apply_async  # type: ignore[attr-defined]
    scheduler.tick = tick_and_read
    scheduler.apply_async = apply_async_counted
    read()


def scheduler_name(scheduler: Any) -> str:
    """``module:Class`` of the scheduler (celery_beat_info's ``scheduler`` label)."""
    cls = type(scheduler)
    return f"{cls.__module__}:{cls.__qualname__}"


# -- /metrics ----------------------------------------------------------------------


class BeatCollector(Collector):
    """The beat agent's series, from the last snapshot.

    celery_beat_info{hostname="celerybeat@web-1",scheduler="celery.beat:PersistentScheduler"} 1.0
    celery_beat_entry_interval_seconds{entry="nightly-report",name="reports.build"} 86400.0
    celery_beat_entry_sent_total{entry="nightly-report",name="reports.build"} 3.0

    ``own_process``: beat has this /metrics to itself (``celery beat``, or the child
    process a worker's ``-B`` starts), so it also says what the worker's pipeline
    would (folded labels, scrape errors, build info); inside a worker's process
    (a threaded embedded beat) the worker's collectors say it.
    describe() names nothing: it shares a registry with the worker's in that case.
    """

    def __init__(
        self,
        state: BeatSchedule,
        hostname: str,
        scheduler: str,
        *,
        own_process: bool = True,
        scrape_errors: Mapping[str, int] | None = None,
    ) -> None:
        self.state = state
        self.labels = {"hostname": hostname, "scheduler": scheduler}
        self.own_process = own_process
        self.scrape_errors = scrape_errors if scrape_errors is not None else {}

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        beat = info("celery_beat_info")
        beat.add_metric([], self.labels)
        yield beat
        snapshot = self.state.snapshot
        rows = snapshot.rows if snapshot is not None else {}
        interval = gauge("celery_beat_entry_interval_seconds")
        next_run = gauge("celery_beat_entry_next_run_timestamp_seconds")
        last_run = gauge("celery_beat_entry_last_run_timestamp_seconds")
        sent = counter("celery_beat_entry_sent_total")
        for (entry, name), row in rows.items():
            labels = [entry, name]
            if row.interval is not None:
                interval.add_metric(labels, row.interval)
            if row.next_run is not None:
                next_run.add_metric(labels, row.next_run)
            if row.last_run is not None:
                last_run.add_metric(labels, row.last_run)
            sent.add_metric(labels, row.sent)
        yield from (interval, next_run, last_run, sent)
        errors = counter("celery_vitals_beat_agent_errors_total")
        for part, count in list(self.state.errors.items()):
            errors.add_metric([part], count)
        yield errors
        if not self.own_process:
            return
        folded = counter("celery_vitals_label_values_folded_total")
        for guard in (self.state.entries, self.state.task_names):
            for reason, count in list(guard.folded.items()):
                folded.add_metric([guard.label, reason], count)
        yield folded
        scrape_errors = counter("celery_vitals_scrape_errors_total")
        for family, count in list(self.scrape_errors.items()):
            scrape_errors.add_metric([family], count)
        yield scrape_errors
        yield build_info()
