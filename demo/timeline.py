"""The demo's timeline: healthy traffic, then incidents from the diagnosis tree, one at a time.

Each incident changes the traffic for a few minutes so that one alert of
alerts/celery-vitals.rules.yml fires (with the demo's shortened windows,
demo/rules-overrides.yml), then ends with its fix so the alert resolves.
``schedule`` lays them out on the timeline; ``Load.run`` sends the traffic.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from demo.console import say

WARM_UP_MINUTES = 1.0  # healthy traffic first: the rates have a baseline
GAP_MINUTES = 1.0  # healthy traffic between two incidents of the full timeline
REPORTS_QUEUE = "reports"  # the queue no worker consumes during no-consumers
UNKNOWN_TASK = "demo.invoice_v2"  # the task the "deploy" sends before the workers know it


@dataclass(frozen=True)
class Traffic:
    """What the load sends; an incident changes some of it while it lasts."""

    declined_in_ten: int = 0  # of every 10 demo.charge, how many the provider declines
    sync_down: bool = False  # demo.sync's dependency is down: it retries until the end
    unknown_task: bool = False  # one task a second is UNKNOWN_TASK
    reports: bool = False  # a demo.report to REPORTS_QUEUE every two seconds
    oom_every: float = 0.0  # seconds between two demo.resize (0: none)


@dataclass(frozen=True)
class Incident:
    name: str
    story: str  # what goes wrong, printed when it begins
    fix: str  # printed when it ends
    alerts: tuple[str, ...]  # what fires: (alert name, severity) as "Name/severity"
    minutes: float
    traffic: dict[str, Any]  # the Traffic fields it changes
    on_end: str | None = None  # a Load method run when it ends (the fix)


INCIDENTS: dict[str, Incident] = {
    incident.name: incident
    for incident in (
        Incident(
            "task-failing",
            "the payment provider declines 3 in 10 cards: demo.charge fails with CardDeclined",
            "the provider accepts cards again",
            ("CeleryTaskFailureRateHigh/warning",),
            2.0,
            {"declined_in_ten": 3},
        ),
        Incident(
            "retry-storm",
            "demo.sync's dependency is down: every demo.sync retries every 5 s, without limit",
            "the dependency is back: the retrying demo.sync succeed",
            ("CeleryTaskRetryStorm/warning",),
            2.0,
            {"sync_down": True},
        ),
        Incident(
            "not-registered",
            f"deploy: the web app now sends {UNKNOWN_TASK}, the workers still run the old code",
            "the workers are deployed too",
            ("CeleryTaskNotRegistered/warning",),
            1.0,
            {"unknown_task": True},
        ),
        Incident(
            "no-consumers",
            f"task_routes sends demo.report to queue {REPORTS_QUEUE!r}, which no worker consumes",
            f"the workers consume {REPORTS_QUEUE!r} too "
            f"(celery control add_consumer {REPORTS_QUEUE})",
            ("CeleryQueueNoConsumers/critical",),
            2.0,
            {"reports": True},
            on_end="consume_reports",
        ),
        Incident(
            "worker-killed",
            "demo.resize runs out of memory: the OOM killer SIGKILLs a pool process every 15 s",
            "demo.resize gets smaller images",
            ("CeleryWorkerPoolProcessKilled/warning", "CeleryTaskWorkerLost/warning"),
            1.0,
            {"oom_every": 15.0},
        ),
    )
}


def parse_incidents(value: str) -> list[Incident]:
    """DEMO_INCIDENTS ("name[,name]") as incidents; ValueError naming the valid ones."""
    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in INCIDENTS]
    if unknown or not names:
        raise ValueError(
            f"DEMO_INCIDENTS: unknown incident {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(INCIDENTS)}"
        )
    return [INCIDENTS[name] for name in names]


@dataclass(frozen=True)
class Slot:
    """An incident on the timeline: it begins and ends at these minutes."""

    incident: Incident
    begins: float
    ends: float


def schedule(incidents: Sequence[Incident], *, warm_up: bool) -> list[Slot]:
    """The full timeline (warm-up, gaps) or the chosen incidents back to back."""
    minute = WARM_UP_MINUTES if warm_up else 0.0
    slots = []
    for incident in incidents:
        slots.append(Slot(incident, minute, minute + incident.minutes))
        minute += incident.minutes + (GAP_MINUTES if warm_up else 0.0)
    return slots


def clock(minutes: float) -> str:
    return f"{int(minutes):02d}:{round(minutes % 1 * 60):02d}"


def describe(slots: Sequence[Slot], minute_seconds: float) -> list[str]:
    """The printed timeline."""
    unit = "" if minute_seconds == 60 else f" (a minute is {minute_seconds:g} s here)"
    lines = [f"timeline{unit}:"]
    if not slots or slots[0].begins > 0:
        lines.append("  00:00  healthy traffic")
    for slot in slots:
        lines.append(
            f"  {clock(slot.begins)}  {slot.incident.name}: {slot.incident.story}; "
            f"expect {', '.join(slot.incident.alerts)}"
        )
        lines.append(f"  {clock(slot.ends)}  {slot.incident.name} ends: {slot.incident.fix}")
    return lines


def incident_of(alertname: str) -> str | None:
    """The incident whose intended alert this is (the receiver names it)."""
    for incident in INCIDENTS.values():
        if any(alert.split("/")[0] == alertname for alert in incident.alerts):
            return incident.name
    return None


class Load:
    """Sends tasks at ``rate`` per second following the timeline; healthy once it is over."""

    def __init__(self, app: Any, rate: float, minute_seconds: float) -> None:
        from demo import app as tasks  # the demo's tasks; imported once the broker is known

        self.app, self.tasks = app, tasks
        self.rate, self.minute_seconds = rate, minute_seconds
        self.traffic = Traffic()
        self.sent = 0
        self.charges = 0
        self.last_oom = 0.0
        self.ends_at = 0.0  # wall clock: when the current incident ends

    def run(self, slots: Sequence[Slot], until: Callable[[], bool] = lambda: False) -> None:
        """Follows ``slots`` from now; keeps sending healthy traffic until ``until()``."""
        start = time.monotonic()
        # (minute, 0 = an end / 1 = a beginning, slot): an incident ends before the next begins
        events = sorted(
            [(slot.ends, 0, slot) for slot in slots] + [(slot.begins, 1, slot) for slot in slots],
            key=lambda e: (e[0], e[1]),
        )
        while not until():
            minute = (time.monotonic() - start) / self.minute_seconds
            while events and events[0][0] <= minute:
                _, beginning, slot = events.pop(0)
                self._begin(slot) if beginning else self._end(slot.incident)
                if not events:
                    say("timeline: over, healthy traffic until Ctrl-C")
            self.tick()
            time.sleep(1.0 / self.rate)

    def _begin(self, slot: Slot) -> None:
        incident = slot.incident
        self.ends_at = time.time() + (slot.ends - slot.begins) * self.minute_seconds
        say(
            f"incident {incident.name} begins: {incident.story} "
            f"(expect {', '.join(incident.alerts)})"
        )
        self.traffic = dataclasses.replace(self.traffic, **incident.traffic)

    def _end(self, incident: Incident) -> None:
        say(f"incident {incident.name} ends: {incident.fix}")
        self.traffic = dataclasses.replace(
            self.traffic, **{field: getattr(Traffic(), field) for field in incident.traffic}
        )
        if incident.on_end is not None:
            getattr(self, incident.on_end)()

    def tick(self) -> None:
        """One task: six in ten demo.add, two demo.charge, one demo.sync, one of the
        incident's (demo.add when there is none)."""
        slot = self.sent % 10
        self.sent += 1
        if slot in (6, 7):
            self.charges += 1
            self.tasks.charge.delay(declined=self.charges % 10 < self.traffic.declined_in_ten)
        elif slot == 8:
            self.tasks.sync.delay(until=self.ends_at if self.traffic.sync_down else 0.0)
        elif slot == 9 and not self._incident_task():
            self.tasks.add.delay(self.sent, 1)
        elif slot < 9:
            self.tasks.add.delay(self.sent, 2)

    def _incident_task(self) -> bool:
        """Sends one task of the current incident if one is due; whether it did."""
        now = time.monotonic()
        if self.traffic.oom_every and now - self.last_oom >= self.traffic.oom_every:
            self.last_oom = now
            self.tasks.resize.delay()
            return True
        if self.traffic.unknown_task:
            self.app.send_task(UNKNOWN_TASK)
            return True
        if self.traffic.reports and self.sent % 20 == 10:
            self.tasks.report.apply_async(queue=REPORTS_QUEUE)
            return True
        return False

    def consume_reports(self) -> None:
        """The fix of no-consumers: every worker starts consuming the reports queue."""
        self.app.control.add_consumer(REPORTS_QUEUE, reply=False)
