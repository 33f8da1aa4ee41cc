"""``celery-vitals doctor --prometheus-url``: the Prometheus side of a setup, read-only,
through Prometheus' HTTP API (``/api/v1/rules``, ``/api/v1/query``, ``/api/v1/targets``,
``/api/v1/alerts``).

What the broker side cannot tell: are celery-vitals' alert rules loaded and evaluating,
does their selector see the exporters and the agents (and are those up), is every
agent joined with an exporter of its broker (the label ``broker``, on which the rules
join the exporter's queue series with the workers' series), is any task counted twice
(an exporter's event stream and the agents both counting it), and which celery-vitals
alerts fire now.

Flow as in look.py: ``look`` gathers a ``PrometheusView`` (plain data from the API),
each check turns it into Findings, ``diagnose`` runs them all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_vitals.brokers import BROKER_LABEL as BROKER
from celery_vitals.brokers import BROKER_NAME_ENV
from celery_vitals.credentials import safe_url
from celery_vitals.doctor.findings import FAIL, OK, WARN, Finding, names_of
from celery_vitals.doctor.look import HttpAnswer, Unreachable, http_get

#: The alerts whose expression the selector is read from, first found first.
SELECTOR_RULES = ("CeleryExporterMissing", "CeleryExporterDown")
#: What sets the broker label, in the exporter and in the agents alike.
BROKER_NAME_SETTING = f"{BROKER_NAME_ENV} (--broker-name)"
_RULES_FIX = (
    "add the rule file to Prometheus' rule_files (alerts/celery-vitals.rules.yml, or your "
    "`celery-vitals rules --output FILE`) and reload it; with the Prometheus Operator, "
    "give the chart's PrometheusRule the labels its ruleSelector picks "
    "(prometheusRule.enabled, prometheusRule.additionalLabels)"
)


class ApiError(Exception):
    """One line: what was asked of Prometheus and why it gave no answer."""


#: GET an API path with query parameters -> the answer's ``data`` (ApiError otherwise).
Get = Callable[[str, Mapping[str, str]], Any]


def api(url: str, timeout: float = 5.0) -> Get:
    """Prometheus' HTTP API at ``url`` (its base: a path prefix is kept)."""

    def get(path: str, params: Mapping[str, str]) -> Any:
        try:
            answer = http_get(url, f"/api/v1/{path}", params, timeout=timeout)
        except Unreachable as error:
            raise ApiError(f"cannot reach {error}") from None
        return _data(answer, params.get("query"))

    return get


def _data(answer: HttpAnswer, query: str | None) -> Any:
    asked = f"{answer.url} ({query})" if query else answer.url
    if answer.status in (401, 403):
        raise ApiError(
            f"{answer.url} answered HTTP {answer.status}: it needs credentials "
            "(http://user:password@host:9090)"
        )
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        kind = answer.content_type.split(";")[0] or "no Content-Type"
        raise ApiError(
            f"{answer.url} answered HTTP {answer.status} ({kind}), not as Prometheus' HTTP API"
        )
    if body["status"] == "error":
        raise ApiError(f"{asked} failed: {body.get('errorType')}: {body.get('error')}")
    return body.get("data")


# -- what the doctor sees ----------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Target:
    job: str
    instance: str

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Target:
        return cls(labels.get("job", ""), labels.get("instance", ""))


@dataclass(frozen=True)
class Rule:
    group: str
    file: str
    name: str
    kind: str  # alerting | recording
    query: str
    health: str  # ok | err | unknown
    error: str


@dataclass
class PrometheusView:
    url: str
    error: str | None = None
    error_fix: str = ""
    groups: int = 0  # rule groups loaded, any
    shipped: frozenset[str] = frozenset()  # the alert names celery-vitals ships
    rules: list[Rule] = field(default_factory=list)  # celery-vitals' (alerts and records)
    recorded: frozenset[str] = frozenset()  # every recording rule's name, any group
    selector: str | None = None  # label matchers, without braces
    selector_from: str = ""  # "--selector" or "rule <name>"
    everywhere: set[Target] = field(default_factory=set)  # exporting build_info at all
    selected: set[Target] = field(default_factory=set)  # ... within the selector
    down: dict[Target, str] = field(default_factory=dict)  # up 0 -> why (lastError)
    exporters: dict[Target, set[str]] = field(default_factory=dict)  # -> brokers polled
    agents: dict[Target, tuple[str, str]] = field(default_factory=dict)  # -> (broker, host)
    # the agents inside celery beat -> (broker, hostname, scheduler); their entries
    beats: dict[Target, tuple[str, str, str]] = field(default_factory=dict)
    beat_entries: dict[Target, int] = field(default_factory=dict)
    shared_entries: dict[str, set[str]] = field(default_factory=dict)  # broker -> entries
    # (broker, name, queue_name) -> the exporters / the agents' jobs counting that task
    counted_by_exporters: dict[tuple[str, str, str], set[Target]] = field(default_factory=dict)
    counted_by_agents: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    firing: list[Mapping[str, Any]] = field(default_factory=list)  # celery-vitals alerts

    @property
    def alerts(self) -> list[Rule]:
        """celery-vitals' alerting rules."""
        return [
            rule for rule in self.rules if rule.kind == "alerting" and rule.name in self.shipped
        ]


def _matchers(selector: str) -> str:
    """``{...}`` or ``...`` -> the matchers inside."""
    text = selector.strip()
    return text[1:-1].strip() if text.startswith("{") and text.endswith("}") else text


def series(metric: str, selector: str | None) -> str:
    return f"{metric}{{{selector}}}" if selector else metric


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR_START = re.compile(r"[a-zA-Z_:][\w:]*\s*\{|\{")
_RECORDED = re.compile(r"(?<![\w:.])[a-zA-Z_][\w]*:[\w:]*")


def selector_of(query: str) -> str:
    """The label matchers of the first series selector of a rule's query (the rule file
    scopes every series with the same ones): ``up{job=~"a.*"} == 0`` -> ``job=~"a.*"``."""
    start = _SELECTOR_START.search(query)
    if start is None:
        return ""
    position, opened = start.end(), start.end()
    while position < len(query):
        quoted = _STRING.match(query, position)
        if quoted:
            position = quoted.end()
        elif query[position] == "}":
            return query[opened:position].strip()
        else:
            position += 1
    return ""


def recorded_series(query: str) -> set[str]:
    """The recorded series (names with a colon) a query reads; strings left out."""
    return set(_RECORDED.findall(_STRING.sub('""', query)))


def look(url: str, selector: str | None = None, *, get: Get | None = None) -> PrometheusView:
    """Everything the checks need; an API call that fails ends it (``error``)."""
    view = PrometheusView(safe_url(url))
    ask = get or api(url)
    try:
        _look_at_rules(ask, view)
    except ApiError as error:
        view.error = str(error)
        view.error_fix = (
            "check --prometheus-url: the base URL of the Prometheus server (or of a "
            "Prometheus-compatible query API such as Thanos or Mimir, with its path "
            "prefix), reachable from here, e.g. http://prometheus:9090"
        )
        return view
    if selector is not None:
        view.selector, view.selector_from = _matchers(selector), "--selector"
    else:
        for name in (*SELECTOR_RULES, *(rule.name for rule in view.alerts)):
            rule = next((rule for rule in view.alerts if rule.name == name), None)
            if rule is not None:
                view.selector, view.selector_from = selector_of(rule.query), f"rule {name}"
                break
    try:
        _look_at_targets(ask, view)
        _look_at_alerts(ask, view)
    except ApiError as error:
        view.error = str(error)
        view.error_fix = (
            'check --selector: label matchers such as job=~"celery-vitals.*"'
            if selector is not None
            else "see the error: Prometheus refused a query of the doctor"
        )
    return view


def _look_at_rules(ask: Get, view: PrometheusView) -> None:
    """celery-vitals' rules: the groups with a shipped alert, and those with the recording
    rules these alerts read (wherever each group comes from: a file, a PrometheusRule)."""
    from celery_vitals.rules.alerts import alert_names

    view.shipped = alert_names()
    groups = ask("rules", {}).get("groups") or []
    view.groups = len(groups)
    loaded = [
        Rule(
            str(group.get("name", "")),
            str(group.get("file", "")),
            str(rule.get("name", "")),
            str(rule.get("type", "")),
            str(rule.get("query", "")),
            str(rule.get("health", "unknown")),
            str(rule.get("lastError", "") or ""),
        )
        for group in groups
        for rule in group.get("rules") or []
    ]
    view.recorded = frozenset(rule.name for rule in loaded if rule.kind == "recording")
    ours = {
        (rule.file, rule.group)
        for rule in loaded
        if rule.kind == "alerting" and rule.name in view.shipped
    }
    read = {
        name
        for rule in loaded
        if (rule.file, rule.group) in ours and rule.kind == "alerting"
        for name in recorded_series(rule.query)
    }
    ours |= {
        (rule.file, rule.group) for rule in loaded if rule.kind == "recording" and rule.name in read
    }
    view.rules = [rule for rule in loaded if (rule.file, rule.group) in ours]


def _query(ask: Get, expr: str) -> list[dict[str, str]]:
    """An instant query's series: their labels."""
    data = ask("query", {"query": expr})
    return [dict(item.get("metric") or {}) for item in (data or {}).get("result") or []]


def _look_at_targets(ask: Get, view: PrometheusView) -> None:
    s = view.selector
    view.everywhere = {
        Target.of(m) for m in _query(ask, "count by (job, instance) (celery_vitals_build_info)")
    }
    if s is None:
        return
    view.selected = {
        Target.of(m)
        for m in _query(ask, f"count by (job, instance) ({series('celery_vitals_build_info', s)})")
    }
    # down: in a job the selector names, or after exporting celery-vitals series within it
    down = {
        Target.of(m)
        for m in _query(
            ask,
            f"({series('up', s)} == 0) or ((up == 0) and on (job, instance) "
            f"max_over_time({series('celery_vitals_build_info', s)}[1d]))",
        )
    }
    if down:
        reasons = {
            Target.of(target.get("labels") or {}): str(target.get("lastError") or "")
            for target in ask("targets", {"state": "active"}).get("activeTargets") or []
        }
        view.down = {target: reasons.get(target, "") for target in down}
    for m in _query(ask, series("celery_broker_up", s)):
        view.exporters.setdefault(Target.of(m), set()).add(m.get(BROKER, ""))
    for m in _query(ask, series("celery_vitals_agent_info", s)):
        view.agents[Target.of(m)] = (m.get(BROKER, ""), m.get("hostname", ""))
    _look_at_beats(ask, view, s)
    received = series("celery_task_received_total", s)
    for m in _query(
        ask,
        f"group by ({BROKER}, name, queue_name, job, instance) ({received} "
        f"and on (job, instance) ({series('celery_vitals_event_stream_up', s)} == 1))",
    ):
        view.counted_by_exporters.setdefault(_task(m), set()).add(Target.of(m))
    for m in _query(
        ask,
        f"group by ({BROKER}, name, queue_name, job) ({received} "
        f"and on (job, instance) {series('celery_vitals_agent_info', s)})",
    ):
        view.counted_by_agents.setdefault(_task(m), set()).add(m.get("job", ""))


def _look_at_beats(ask: Get, view: PrometheusView, s: str) -> None:
    """The agents inside celery beat, their schedule's size, and the entries that more
    than one of them serves (CeleryBeatDuplicate's condition)."""
    for m in _query(ask, series("celery_beat_info", s)):
        view.beats[Target.of(m)] = (
            m.get(BROKER, ""),
            m.get("hostname", ""),
            m.get("scheduler", ""),
        )
    if not view.beats:
        return
    entries = series("celery_beat_entry_interval_seconds", s)
    for m, value in _values(ask, f"count by (job, instance) ({entries})"):
        view.beat_entries[Target.of(m)] = int(value)
    for m in _query(
        ask,
        f"count by ({BROKER}, entry) (count by ({BROKER}, entry, instance) ({entries})) > 1",
    ):
        view.shared_entries.setdefault(m.get(BROKER, ""), set()).add(m.get("entry", ""))


def _values(ask: Get, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query's series: their labels and values."""
    data = ask("query", {"query": expr})
    found = []
    for item in (data or {}).get("result") or []:
        try:
            value = float((item.get("value") or [0, "nan"])[1])
        except (TypeError, ValueError):
            value = float("nan")
        found.append((dict(item.get("metric") or {}), value))
    return found


def _look_at_alerts(ask: Get, view: PrometheusView) -> None:
    view.firing = [
        alert
        for alert in ask("alerts", {}).get("alerts") or []
        if alert.get("state") == "firing"
        and (alert.get("labels") or {}).get("alertname") in view.shipped
    ]


def _task(labels: Mapping[str, str]) -> tuple[str, str, str]:
    return labels.get(BROKER, ""), labels.get("name", ""), labels.get("queue_name", "")


# -- the checks ----------------------------------------------------------------------------

Check = Callable[[PrometheusView], Iterable[Finding]]


def _broker(value: str) -> str:
    return f'{BROKER}="{value}"'


def _targets(targets: Iterable[Target]) -> str:
    return names_of(target.instance for target in targets)


def _braced(view: PrometheusView) -> str:
    return f"{{{view.selector}}}"


_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def selector_fix(selector: str) -> str:
    """How to get targets outside ``selector`` seen, by the labels it matches on."""
    labels = set(_MATCHER_LABEL.findall(_STRING.sub('""', selector)))
    ways = ["scrape them in a job it matches"] if "job" in labels else []
    if BROKER in labels:
        ways.append(
            "run a celery-vitals there that labels every series with broker (older versions do not)"
        )
    ways.append(
        "generate the rules with a selector that matches them (`celery-vitals rules "
        "--config` with `selector:`, or the chart's prometheusRule.selector)"
    )
    return "make the rules' selector see them: " + ", or ".join(ways)


def check_rules(view: PrometheusView) -> Iterator[Finding]:
    alerts = view.alerts
    if not alerts:
        yield Finding(
            "prometheus-rules",
            FAIL,
            f"no celery-vitals alert rule is loaded in Prometheus ({view.groups} rule "
            "groups, none with an alert of celery-vitals): no celery-vitals alert can fire",
            _RULES_FIX,
        )
        return
    from celery_vitals.rules.alerts import PERIODIC_CONFIG  # recorded only when configured

    read: dict[str, list[str]] = {}
    for rule in alerts:
        for name in recorded_series(rule.query) - view.recorded - {PERIODIC_CONFIG}:
            read.setdefault(name, []).append(rule.name)
    if read:
        yield Finding(
            "prometheus-rules",
            FAIL,
            "alerts read recorded series that no loaded rule records: "
            + "; ".join(f"{name} ({names_of(set(users))})" for name, users in sorted(read.items()))
            + ": those alerts can never fire",
            "load the whole rule file: its recording rules group (celery-vitals.recording) "
            "with its alerts group",
        )
    files: dict[str, set[str]] = {}
    for rule in alerts:
        files.setdefault(rule.group, set()).add(rule.file)
    twice = {group: paths for group, paths in files.items() if len(paths) > 1}
    for group, paths in sorted(twice.items()):
        yield Finding(
            "prometheus-rules",
            WARN,
            f"group {group} is loaded from {len(paths)} files ({names_of(paths)}): every "
            "alert in it fires, and pages, once per file",
            "keep one copy of the rule file in rule_files (or one PrometheusRule)",
            subject=group,
        )
    if not read:
        loaded = {rule.name for rule in alerts}
        groups = sorted({rule.group for rule in view.rules})
        yield Finding(
            "prometheus-rules",
            OK,
            f"{len(loaded)} of the {len(view.shipped)} celery-vitals alerts loaded "
            f"(groups {', '.join(groups)})",
        )
    broken = [rule for rule in view.rules if rule.health == "err"]
    for rule in broken:
        yield Finding(
            "prometheus-rule-eval",
            FAIL,
            f"rule {rule.name} (group {rule.group}) fails to evaluate: {rule.error}",
            "Prometheus' error says why; 'many-to-many' or 'same labelset' errors mean "
            "series the rules expect once come twice (two exporters of one broker with "
            "the same labels, or a target scraped by two jobs): drop the duplicate scrape",
            subject=rule.name,
        )
    if not broken:
        unknown = sum(rule.health == "unknown" for rule in view.rules)
        later = f" ({unknown} not evaluated yet)" if unknown else ""
        yield Finding(
            "prometheus-rule-eval",
            OK,
            f"{len(view.rules) - unknown} celery-vitals rules evaluate without errors{later}",
        )


def check_targets(view: PrometheusView) -> Iterator[Finding]:
    if view.selector is None:
        yield Finding(
            "prometheus-targets",
            WARN,
            "no celery-vitals alert rule is loaded and no --selector given: which targets "
            "the rules would see cannot be told",
            "load the rules, or pass --selector with the label matchers your rules use",
        )
        return
    where = f"the rules' selector {_braced(view)} (from {view.selector_from})"
    if not view.everywhere and not view.down:
        yield Finding(
            "prometheus-targets",
            FAIL,
            "no target exports celery_vitals_build_info: Prometheus scrapes no "
            "celery-vitals exporter or agent",
            "add scrape jobs for `celery-vitals serve` (port 9808) and for each worker's "
            f"agent (port 9809), with job names {where} matches",
        )
        return
    outside: dict[str, set[Target]] = {}
    for target in view.everywhere - view.selected:
        outside.setdefault(target.job, set()).add(target)
    if not view.selected and outside:
        yield Finding(
            "prometheus-targets",
            FAIL,
            f"{where} matches none of the targets that export celery-vitals metrics "
            f"(jobs {names_of(outside)}): no celery-vitals alert can fire",
            selector_fix(view.selector),
        )
    else:
        for job, targets in sorted(outside.items()):
            yield Finding(
                "prometheus-targets",
                FAIL,
                f"job {job}: targets {_targets(targets)} export celery-vitals metrics "
                f"outside {where}: no celery-vitals alert sees them",
                selector_fix(view.selector),
                subject=job,
            )
    for target, reason in sorted(view.down.items()):
        yield Finding(
            "prometheus-targets",
            FAIL,
            f"target {target.instance} of job {target.job} is down"
            + (f": {reason}" if reason else ""),
            "check that the exporter or agent there runs and that Prometheus reaches it "
            "(address, port, network policy, TLS and basic auth of the scrape config)",
            subject=target.instance,
        )
    if view.selected and not outside and not view.down:
        yield Finding(
            "prometheus-targets",
            OK,
            f"{where} matches the targets that export celery-vitals metrics, all up: "
            f"exporters {_targets(view.exporters) or 'none'}, agents "
            f"{_targets(view.agents) or 'none'}",
        )


def check_join(view: PrometheusView) -> Iterator[Finding]:
    if view.selector is None:
        return
    polled = {broker for brokers in view.exporters.values() for broker in brokers}
    by_broker: dict[str, set[Target]] = {}
    for target, (broker, _) in view.agents.items():
        by_broker.setdefault(broker, set()).add(target)
    exporters = (
        "; ".join(
            f"{_broker(broker)} ({_targets(t for t, b in view.exporters.items() if broker in b)})"
            for broker in sorted(polled)
        )
        or "none"
    )
    lonely = {broker: targets for broker, targets in by_broker.items() if broker not in polled}
    for broker, targets in sorted(lonely.items()):
        hosts = (view.agents[target][1] for target in targets)
        yield Finding(
            "prometheus-join",
            FAIL,
            f"agents {names_of(hosts)} (job {names_of({t.job for t in targets})}) report "
            f"{_broker(broker)} and no exporter "
            f"within the selector polls it (exporters: {exporters}): the rules cannot join "
            "their workers with the queues (queue alerts, CeleryWorkerDown)",
            f"set {BROKER_NAME_SETTING} to the same value in the exporter and in the "
            "workers' agents, or run and scrape `celery-vitals serve` for that broker",
            subject=broker,
        )
    if not lonely:
        joined = (
            f"every agent's broker has an exporter: {exporters}"
            if view.agents
            else "no agent within the selector: nothing to join"
        )
        yield Finding("prometheus-join", OK, joined)


def check_double_count(view: PrometheusView) -> Iterator[Finding]:
    if view.selector is None:
        return
    twice: dict[str, list[tuple[str, str, str]]] = {}
    for task in view.counted_by_exporters.keys() & view.counted_by_agents.keys():
        twice.setdefault(task[0], []).append(task)
    for broker, tasks in sorted(twice.items()):
        exporters = {target for task in tasks for target in view.counted_by_exporters[task]}
        jobs = {job for task in tasks for job in view.counted_by_agents[task]}
        yield Finding(
            "prometheus-doubled",
            FAIL,
            f"{_broker(broker)}: tasks "
            f"{names_of(f'{name} (queue {queue})' for _, name, queue in tasks)} counted "
            f"twice, by the event stream of exporter {_targets(exporters)} (job "
            f"{names_of({t.job for t in exporters})}) and by the agents of job "
            f"{names_of(jobs)}",
            "run that exporter with --no-event-stream (CELERY_VITALS_EVENT_STREAM=false): "
            "the agents own task and worker metrics; or remove the agents",
            subject=broker,
        )
    if not twice:
        yield Finding(
            "prometheus-doubled",
            OK,
            "no task is counted by both an exporter's event stream and an agent",
        )


_ONE_BEAT = (
    "run exactly one beat per schedule: one replica with a Recreate deploy strategy, -B on "
    "one worker only (never beside a separate celery beat), or a scheduler that takes a "
    "lock (RedBeat)"
)


def _beat(view: PrometheusView, target: Target) -> str:
    _, hostname, scheduler = view.beats[target]
    entries = view.beat_entries.get(target, 0)
    return (
        f"{hostname or '?'} at {target.instance} (job {target.job}; scheduler "
        f"{scheduler or '?'}, {entries} {'entry' if entries == 1 else 'entries'})"
    )


def check_beat(view: PrometheusView) -> Iterator[Finding]:
    """The celery beats Prometheus scrapes, per broker: one each, and with which scheduler."""
    if view.selector is None:
        return
    if not view.beats:
        yield Finding(
            "prometheus-beat",
            OK,
            "no celery beat agent within the selector (celery_beat_info): CeleryBeatDown "
            "cannot page and CeleryPeriodicTaskMissed watches only the tasks of "
            "periodic_tasks. Where celery beat runs (or a worker with -B), call "
            "celery_vitals.agent.install(app) in the app module it loads and scrape its "
            "agent",
        )
        return
    by_broker: dict[str, list[Target]] = {}
    for target, (broker, _, _) in sorted(view.beats.items()):
        by_broker.setdefault(broker, []).append(target)
    for broker, targets in sorted(by_broker.items()):
        beats = "; ".join(_beat(view, target) for target in targets)
        shared = view.shared_entries.get(broker, set())
        if len(targets) == 1:
            yield Finding(
                "prometheus-beat",
                OK,
                f"{_broker(broker)}: one celery beat, {beats}",
                subject=broker,
            )
        elif shared:
            yield Finding(
                "prometheus-beat",
                FAIL,
                f"{_broker(broker)}: {len(targets)} celery beats serve the same entries "
                f"{names_of(shared)}: {beats}; each sends them, so their tasks run "
                f"{len(targets)} times (CeleryBeatDuplicate)",
                _ONE_BEAT,
                subject=broker,
            )
        else:
            yield Finding(
                "prometheus-beat",
                OK,
                f"{_broker(broker)}: {len(targets)} celery beats, no entry served by two: {beats}",
                subject=broker,
            )


def check_alerts(view: PrometheusView) -> Iterator[Finding]:
    firing: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for alert in view.firing:
        labels = alert.get("labels") or {}
        firing.setdefault((labels["alertname"], labels.get("severity", "")), []).append(alert)
    for (name, severity), alerts in sorted(firing.items()):
        shown = [
            ", ".join(
                f"{k}={v}"
                for k, v in sorted((alert.get("labels") or {}).items())
                if k not in ("alertname", "severity")
            )
            for alert in alerts
        ]
        runbook = (alerts[0].get("annotations") or {}).get("runbook_url")
        yield Finding(
            "prometheus-alerts",
            FAIL if severity == "critical" else WARN,
            f"{name} ({severity or 'no severity'}) is firing for "
            f"{names_of(f'{{{labels}}}' for labels in shown)}",
            f"follow its runbook: {runbook}" if runbook else "see docs/runbooks.md",
            subject=name,
        )
    if not firing:
        yield Finding("prometheus-alerts", OK, "no celery-vitals alert is firing")


CHECKS: tuple[Check, ...] = (
    check_rules,
    check_targets,
    check_join,
    check_double_count,
    check_beat,
    check_alerts,
)


def diagnose(view: PrometheusView) -> list[Finding]:
    """Every check's findings; a Prometheus that cannot be asked is one finding."""
    if view.error is not None:
        return [Finding("prometheus", FAIL, view.error, view.error_fix)]
    found = [Finding("prometheus", OK, f"{view.url}: the HTTP API answered")]
    return found + [finding for check in CHECKS for finding in check(view)]
