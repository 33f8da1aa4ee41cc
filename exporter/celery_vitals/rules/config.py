"""The overrides file of ``celery-vitals rules`` and ``celery-vitals dashboards``.

A YAML mapping; every key is optional (docs/rules-config.md documents each).
``load`` checks the whole file and raises one ``ConfigError`` naming every bad
key or value, which the command line prints on one line (exit code 2).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from celery_vitals.config import ConfigError


@dataclass(frozen=True)
class Threshold:
    """One tunable: its default (a number, or a duration such as "5m"), unit and meaning."""

    value: float | str
    unit: str
    meaning: str


DURATION = "duration"
SECONDS = "seconds"

THRESHOLDS: dict[str, Threshold] = {
    # -- windows ---------------------------------------------------------------
    "rate_window": Threshold(
        "5m",
        DURATION,
        "Window of the per-task and per-queue rates (failure ratio, retry "
        "amplification, ingress, egress, drain-time estimate).",
    ),
    "event_window": Threshold(
        "15m",
        DURATION,
        "Window in which rare events count (lost workers, time limits, "
        "unregistered tasks, redeliveries, exhausted retries, DLQ ingress, exporter health).",
    ),
    # -- tasks -----------------------------------------------------------------
    "failure_ratio_warning": Threshold(
        0.10,
        "ratio",
        "Share of a task's runs that fail (failures no more specific alert "
        "explains) above which CeleryTaskFailureRateHigh opens a ticket.",
    ),
    "failure_ratio_critical": Threshold(0.50, "ratio", "The same share above which it pages."),
    "failure_min_per_minute": Threshold(
        1,
        "failures/min",
        "Fewer failures than this per minute never alert: one failure of "
        "a rare task is not an incident.",
    ),
    "retry_amplification": Threshold(
        4,
        "retries per new task",
        "Retries per newly received task at or above which a task is in a retry storm, "
        "bounded retries or not: each retry is another message and another run. A few "
        "retries with backoff (max_retries=3) stay under it; fifty immediate retries, or an "
        "unbounded loop, are far above it.",
    ),
    "retry_min_per_minute": Threshold(
        1, "retries/min", "Fewer retries than this per minute are no storm."
    ),
    "retries_exhausted_min": Threshold(
        1, "tasks per event window", "Tasks that failed for good after retrying."
    ),
    "worker_lost_min": Threshold(
        1, "failures per event window", "WorkerLostError failures (OOM killer, SIGKILL)."
    ),
    "time_limit_min": Threshold(
        1, "failures per event window", "TimeLimitExceeded or SoftTimeLimitExceeded failures."
    ),
    "not_registered_min": Threshold(
        1, "failures per event window", "Tasks received by a worker that does not know them."
    ),
    "redelivered_min": Threshold(
        1, "tasks per event window", "Tasks the broker delivered a second time."
    ),
    # -- periodic tasks and celery beat ---------------------------------------------
    "periodic_slack_ratio": Threshold(
        0.5,
        "ratio",
        "Share of a beat entry's interval that its task may be late by: CeleryPeriodicTaskMissed "
        "fires when the task has not succeeded within interval + max(interval x this, "
        "periodic_slack_min) (a minutely task 6 min, an hourly one 1.5 h, a daily one 36 h).",
    ),
    "periodic_slack_min": Threshold(
        300,
        SECONDS,
        "The least slack of a beat entry: a task sent every few seconds or minutes may wait in "
        "its queue and run this long before its run counts as missed.",
    ),
    "beat_late_slack": Threshold(
        600,
        SECONDS,
        "A beat entry whose next run time is this far in the past, while its beat sent no "
        "entry for as long, means beat is stuck (CeleryBeatDown). More than beat's "
        "max_interval (300 s by default), the longest it sleeps between two ticks.",
    ),
    "beat_remembered": Threshold(
        "1d",
        DURATION,
        "How long after its last scrape a beat agent that vanished (process gone, target "
        "down) still counts: CeleryBeatDown fires for its broker while no beat of the broker "
        "is up.",
    ),
    # -- queues ----------------------------------------------------------------
    "queue_min_backlog": Threshold(
        100, "messages", "Backlog below which a queue is neither climbing nor draining slowly."
    ),
    "queue_climb_window": Threshold(
        "30m", DURATION, "Window of the long trend (deriv) of a queue's length."
    ),
    "queue_trend_window": Threshold(
        "10m", DURATION, "Window of the short trend: still growing, or already draining."
    ),
    "queue_climb_min_per_minute": Threshold(
        1,
        "messages/min",
        "Net growth over the long window above which a consumed queue is "
        "climbing (under-provisioned).",
    ),
    "queue_drain_slo": Threshold(
        900,
        SECONDS,
        "Drain-time estimate (backlog / egress rate) above which a draining "
        "queue drains too slowly.",
    ),
    "queue_no_drain_window": Threshold(
        "5m",
        DURATION,
        "A queue with messages from which no task was received for this long does not drain.",
    ),
    "oldest_message_warning": Threshold(
        600,
        SECONDS,
        "Age of the oldest task waiting in a queue that opens a ticket.",
    ),
    "oldest_message_critical": Threshold(3600, SECONDS, "The same age that pages."),
    "visibility_timeout_ratio": Threshold(
        0.8,
        "ratio",
        "Oldest unacknowledged delivery as a share of the Redis "
        "visibility_timeout: beyond 1 Redis hands the task to a second worker.",
    ),
    # -- dead-letter queues ----------------------------------------------------
    "dlq_ingress_min": Threshold(
        1, "messages per event window", "Messages into a dead-letter queue."
    ),
    "dlq_stale_window": Threshold(
        "6h",
        DURATION,
        "A dead-letter queue that was never empty for this long is not being drained.",
    ),
    # -- workers ---------------------------------------------------------------
    "worker_down_remembered": Threshold(
        "1h",
        DURATION,
        "How long CeleryWorkerDown keeps firing for a down worker whose "
        "series the exporter purged (--worker-purge-after), while its broker has fewer workers "
        "up than during that time.",
    ),
    "worker_flap_window": Threshold("30m", DURATION, "Window in which worker starts count."),
    "worker_flap_starts": Threshold(
        3,
        "starts",
        "Starts (worker-online events) of one worker in the window that make it flapping.",
    ),
    # -- workers, from the agent inside them -------------------------------------
    "worker_killed_min": Threshold(
        1,
        "pool processes per event window",
        "Pool processes ended by a signal (the OOM killer's SIGKILL among them).",
    ),
    "pool_saturation_ratio": Threshold(
        0.95,
        "ratio",
        "Busy pool processes as a share of the pool, averaged over the rate "
        "window, above which a worker is saturated (while its broker's queues hold a backlog "
        "of at least queue_min_backlog).",
    ),
    "prefetch_held_min": Threshold(
        1,
        "tasks",
        "Tasks a saturated worker (pool_saturation_ratio) holds prefetched (not ETA tasks), "
        "averaged over the rate window, while another worker of the broker idles "
        "(prefetch_idle_ratio).",
    ),
    "prefetch_idle_ratio": Threshold(
        0.5,
        "ratio",
        "Busy pool processes as a share of the pool, averaged over the rate window, at or "
        "below which a worker idles while another one hoards prefetched tasks. A busy but "
        "fair cluster has no worker this idle.",
    ),
    "worker_process_memory_bytes": Threshold(
        2147483648,
        "bytes",
        "The memory bound of one worker process (main or a pool child): "
        "CeleryWorkerMemoryGrowing pages before a growing process reaches it. Set it a "
        "little under what the container allows one process (its memory limit / "
        "(concurrency + 1)), or under the memory the host can spare it.",
    ),
    "memory_fast_window": Threshold(
        "5m",
        DURATION,
        "Window of a worker process' short memory trend (deriv), which sees fast leaks.",
    ),
    "memory_fast_horizon": Threshold(
        1200,
        SECONDS,
        "A process whose short trend reaches the memory bound within this time leaks fast. "
        "A warm-up that levels off further from the bound than its growth rate times this "
        "horizon does not page.",
    ),
    "memory_slow_window": Threshold(
        "6h",
        DURATION,
        "Window of a worker process' long memory trend (deriv), which sees slow leaks; its "
        "growth counts only when kept: the process' lowest memory over the last "
        "memory_slow_floor_window is above its highest in the same span one window earlier "
        "(a warm-up that levelled off, or a child recycled by max_memory_per_child, is not).",
    ),
    "memory_slow_floor_window": Threshold(
        "1h",
        DURATION,
        "Span whose lowest memory must be above the highest of the same span a "
        "memory_slow_window earlier for the long trend to count.",
    ),
    "memory_slow_horizon": Threshold(
        86400,
        SECONDS,
        "A process whose long trend reaches the memory bound within this time leaks slowly.",
    ),
    "worker_remembered": Threshold(
        "6h",
        DURATION,
        "How long after its last scrape an agent's target that is down still "
        "counts as a worker (CeleryWorkerDown) rather than the exporter (CeleryExporterDown).",
    ),
    # -- the exporter ----------------------------------------------------------
    "exporter_remembered": Threshold(
        "1d",
        DURATION,
        "How long after its last successful scrape a target that exported "
        "`celery_broker_up` still counts as an exporter: CeleryExporterDown fires for it "
        "while it is down. A target never scraped at all is CeleryExporterMissing's.",
    ),
    "heartbeats_missed_min": Threshold(
        1,
        "heartbeats per event window",
        "Heartbeats the exporter missed from live workers (events lost on the way).",
    ),
    "tracker_evictions_min": Threshold(
        1, "tasks per event window", "Unfinished tasks dropped from the exporter's uuid map."
    ),
    "label_values_folded_min": Threshold(
        1, "values per event window", "Label values folded into `other` by the cardinality guard."
    ),
}

#: The selector of the shipped files: every series of celery-vitals, whatever job Prometheus
#: scrapes it in (the exporter and the agents label every series with ``broker``).
DEFAULT_SELECTOR = 'broker!=""'
DEFAULT_RUNBOOK_URL = "https://github.com/celery-vitals/celery-vitals/blob/main/docs/runbooks.md"


@dataclass(frozen=True)
class TaskOverride:
    """Failure-ratio thresholds of the tasks ``pattern`` matches (a regex), or none at all."""

    pattern: str
    failure_ratio_warning: float | None = None
    failure_ratio_critical: float | None = None
    ignore: bool = False


@dataclass(frozen=True)
class RulesConfig:
    """Everything a user may override; the defaults build the shipped files."""

    selector: str = DEFAULT_SELECTOR
    thresholds: Mapping[str, float | str] = field(
        default_factory=lambda: {key: t.value for key, t in THRESHOLDS.items()}
    )
    for_: Mapping[str, str] = field(default_factory=dict)
    disabled_alerts: frozenset[str] = frozenset()
    periodic_tasks: Mapping[str, float] = field(default_factory=dict)
    tasks: tuple[TaskOverride, ...] = ()
    ignored_queues: tuple[str, ...] = ()
    runbook_url: str = DEFAULT_RUNBOOK_URL
    dashboard_url: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def text(self, key: str) -> str:
        """A threshold as PromQL (or duration) text: 0.1, 900, "5m"."""
        raw = self.thresholds[key]
        return raw if isinstance(raw, str) else number_text(raw)

    def number(self, key: str) -> float:
        """A numeric threshold (a panel's colour step)."""
        raw = self.thresholds[key]
        if isinstance(raw, str):
            raise TypeError(f"threshold {key} is a duration, not a number")
        return float(raw)

    @property
    def rule_selector(self) -> str:
        """The selector of the rules: the user's, and the ignored queues left out."""
        if not self.ignored_queues:
            return self.selector
        ignored = f'queue_name!~"{regex_text("|".join(self.ignored_queues))}"'
        return f"{self.selector}, {ignored}" if self.selector else ignored


def number_text(value: float) -> str:
    """A number as PromQL text, exact: 2147483648, 0.1 (never 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def regex_text(regex: str) -> str:
    """A regex as the inside of a PromQL double-quoted string."""
    return regex.replace("\\", "\\\\").replace('"', '\\"')


# -- checking ----------------------------------------------------------------------

KEYS = (
    "selector",
    "thresholds",
    "for",
    "disabled_alerts",
    "periodic_tasks",
    "tasks",
    "ignored_queues",
    "runbook_url",
    "dashboard_url",
    "labels",
)
TASK_KEYS = ("name", "pattern", "failure_ratio_warning", "failure_ratio_critical", "ignore")
_DURATION = re.compile(r"(?:\d+(?:ms|[smhdwy]))+")
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_LABEL = re.compile(r"[A-Za-z_]\w*")
_STRING = r'"(?:[^"\\]|\\.)*"'
_MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STRING})\s*")


def seconds(duration: str) -> float:
    """A Prometheus duration ("1h30m") in seconds."""
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(duration))


class _Problems:
    """Collects every problem of a file instead of stopping at the first."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.found.append(f"{where}: {problem}")


def _is_number(raw: Any) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)


def _duration(raw: Any) -> str | None:
    if isinstance(raw, str) and _DURATION.fullmatch(raw):
        return raw
    return None


def _check_regex(raw: Any, where: str, problems: _Problems) -> str | None:
    if not isinstance(raw, str) or not raw:
        problems.add(where, f"expected a regular expression, got {raw!r}")
        return None
    try:
        re.compile(raw)
    except re.error as error:
        problems.add(where, f"bad regular expression {raw!r}: {error}")
        return None
    return raw


def _check_selector(raw: Any, problems: _Problems) -> str:
    if not isinstance(raw, str):
        problems.add("selector", f"expected label matchers as a string, got {raw!r}")
        return DEFAULT_SELECTOR
    text = raw.strip().strip("{}").strip()
    position = 0
    while position < len(text):
        match = _MATCHER.match(text, position)
        if match is None:
            problems.add("selector", f'not label matchers like job=~"celery-vitals.*": {raw!r}')
            return DEFAULT_SELECTOR
        if match.group(2) in ("=~", "!~"):
            _check_regex(yaml.safe_load(match.group(3)), "selector", problems)
        position = match.end()
        if position < len(text) and text[position] != ",":
            problems.add("selector", f"matchers are separated by commas: {raw!r}")
            return DEFAULT_SELECTOR
        position += 1
    return text


def _check_threshold(key: str, raw: Any, problems: _Problems) -> float | str | None:
    where = f"thresholds.{key}"
    if key not in THRESHOLDS:
        problems.add(where, f"unknown threshold (known: {', '.join(THRESHOLDS)})")
        return None
    unit = THRESHOLDS[key].unit
    if unit == DURATION:
        if _duration(raw) is None:
            problems.add(where, f"expected a Prometheus duration such as 5m, got {raw!r}")
        return _duration(raw)
    if unit == SECONDS and _duration(raw) is not None:
        return seconds(raw)
    if not _is_number(raw) or raw < 0:
        problems.add(where, f"expected a number >= 0 ({unit}), got {raw!r}")
        return None
    return float(raw) if isinstance(raw, float) else int(raw)


def _mapping(raw: Any, where: str, problems: _Problems) -> Mapping[Any, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(where, f"expected a mapping, got {raw!r}")
        return {}
    return raw


def _string_list(raw: Any, where: str, problems: _Problems) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        problems.add(where, f"expected a list of strings, got {raw!r}")
        return []
    return list(raw)


def _check_alert(name: Any, where: str, alerts: Collection[str], problems: _Problems) -> bool:
    if name in alerts:
        return True
    problems.add(where, f"unknown alert {name!r}")
    return False


def _ratio(raw: Any, where: str, problems: _Problems) -> float | None:
    if raw is None:
        return None
    if not _is_number(raw) or raw < 0:
        problems.add(where, f"expected a ratio >= 0 such as 0.25, got {raw!r}")
        return None
    return float(raw)


def _check_task(index: int, raw: Any, problems: _Problems) -> TaskOverride | None:
    where = f"tasks[{index}]"
    if not isinstance(raw, Mapping):
        problems.add(where, f"expected a mapping with name or pattern, got {raw!r}")
        return None
    for key in raw:
        if key not in TASK_KEYS:
            problems.add(f"{where}.{key}", f"unknown key (known: {', '.join(TASK_KEYS)})")
    if ("name" in raw) == ("pattern" in raw):
        problems.add(where, "needs exactly one of name (a task name) or pattern (a regex)")
        return None
    if "name" in raw:
        if not isinstance(raw["name"], str) or not raw["name"]:
            problems.add(f"{where}.name", f"expected a task name, got {raw['name']!r}")
            return None
        pattern: str | None = re.escape(raw["name"])
    else:
        pattern = _check_regex(raw["pattern"], f"{where}.pattern", problems)
    ignore = raw.get("ignore", False)
    if not isinstance(ignore, bool):
        problems.add(f"{where}.ignore", f"expected true or false, got {ignore!r}")
    warning = _ratio(raw.get("failure_ratio_warning"), f"{where}.failure_ratio_warning", problems)
    critical = _ratio(
        raw.get("failure_ratio_critical"), f"{where}.failure_ratio_critical", problems
    )
    if pattern is None:
        return None
    return TaskOverride(pattern, warning, critical, ignore is True)


def _check_url(raw: Any, where: str, problems: _Problems) -> str | None:
    if isinstance(raw, str):
        return raw.rstrip("/") if where == "dashboard_url" else raw
    problems.add(where, f"expected a URL, got {raw!r}")
    return None


def _check_labels(raw: Any, problems: _Problems) -> dict[str, str]:
    labels = {}
    for name, text in _mapping(raw, "labels", problems).items():
        if not isinstance(name, str) or not _LABEL.fullmatch(name) or name.startswith("__"):
            problems.add(f"labels.{name}", "not a Prometheus label name")
        elif name == "severity":
            problems.add("labels.severity", "each alert sets its own severity")
        elif not isinstance(text, str | int | float) or isinstance(text, bool):
            problems.add(f"labels.{name}", f"expected a string, got {text!r}")
        else:
            labels[name] = str(text)
    return labels


def from_mapping(data: Any, alerts: Collection[str]) -> RulesConfig:
    """A checked RulesConfig from parsed YAML; ``alerts`` are the alert names."""
    problems = _Problems()
    data = _mapping(data, "file", problems)
    for key in data:
        if key not in KEYS:
            problems.add(str(key), f"unknown key (known: {', '.join(KEYS)})")
    config = RulesConfig()
    changes: dict[str, Any] = {}
    if "selector" in data:
        changes["selector"] = _check_selector(data["selector"], problems)
    thresholds = dict(config.thresholds)
    for key, raw in _mapping(data.get("thresholds"), "thresholds", problems).items():
        checked = _check_threshold(str(key), raw, problems)
        if checked is not None:
            thresholds[str(key)] = checked
    changes["thresholds"] = thresholds
    for_ = {}
    for name, raw in _mapping(data.get("for"), "for", problems).items():
        if _check_alert(name, f"for.{name}", alerts, problems):
            if _duration(raw) is None:
                problems.add(
                    f"for.{name}", f"expected a Prometheus duration such as 5m, got {raw!r}"
                )
            else:
                for_[name] = raw
    changes["for_"] = for_
    disabled = _string_list(data.get("disabled_alerts"), "disabled_alerts", problems)
    changes["disabled_alerts"] = frozenset(
        name for name in disabled if _check_alert(name, "disabled_alerts", alerts, problems)
    )
    periodic = {}
    for name, raw in _mapping(data.get("periodic_tasks"), "periodic_tasks", problems).items():
        if not _is_number(raw) or raw <= 0:
            problems.add(f"periodic_tasks.{name}", f"expected seconds > 0, got {raw!r}")
        else:
            periodic[str(name)] = float(raw)
    changes["periodic_tasks"] = periodic
    raw_tasks = data.get("tasks") or []
    if not isinstance(raw_tasks, list):
        problems.add("tasks", f"expected a list of per-task overrides, got {raw_tasks!r}")
        raw_tasks = []
    overrides = [_check_task(index, raw, problems) for index, raw in enumerate(raw_tasks)]
    changes["tasks"] = tuple(override for override in overrides if override is not None)
    queues = _string_list(data.get("ignored_queues"), "ignored_queues", problems)
    changes["ignored_queues"] = tuple(
        queue for queue in queues if _check_regex(queue, "ignored_queues", problems)
    )
    for key in ("runbook_url", "dashboard_url"):
        if key in data and (url := _check_url(data[key], key, problems)) is not None:
            changes[key] = url
    changes["labels"] = _check_labels(data.get("labels"), problems)
    if problems.found:
        raise ConfigError(problems.found)
    return replace(config, **changes)


def load(path: Path | None, alerts: Collection[str]) -> RulesConfig:
    """The overrides in ``path`` (the defaults without one), checked."""
    if path is None:
        return RulesConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not YAML: {' '.join(str(error).split())}"]) from None
    try:
        return from_mapping({} if data is None else data, alerts)
    except ConfigError as error:
        raise ConfigError([f"{path}: {problem}" for problem in error.problems]) from None
