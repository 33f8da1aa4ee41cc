"""The PromQL vocabulary the alert rules and the dashboards share.

One function per concept, so that a page and the panel it links to compute
the same thing: the share of runs that fail, events of rare counters,
retry amplification, ingress, drain time. Both builders pass their own window
(a rule's ``5m``, a panel's ``$__rate_interval``) and label matchers.

``scope`` puts the user's selector (``broker!=""``, ``job=~"prod-.*"``) into every
series selector of a finished expression, so that the builders write plain
metric names and no query can forget it.
"""

from __future__ import annotations

import re

#: Dashboard uids: the rules link to them, the dashboard builder writes them.
OVERVIEW = "celery-vitals-overview"
TASKS = "celery-vitals-tasks"
QUEUES = "celery-vitals-queues"
WORKERS = "celery-vitals-workers"
SLOW = "celery-vitals-slow"
UIDS = (OVERVIEW, TASKS, QUEUES, WORKERS, SLOW)


def by(labels: str) -> str:
    """`` by (a, b)`` for labels "a, b", or nothing for no labels."""
    return f" by ({labels})" if labels else ""


def series(metric: str, matchers: str = "") -> str:
    """``metric{matchers}`` (just ``metric`` without matchers)."""
    return f"{metric}{{{matchers}}}" if matchers else metric


def sum_rate(metric: str, window: str, labels: str = "", matchers: str = "") -> str:
    """Per-second rate over ``window``, summed by ``labels`` (everything when none)."""
    return f"sum{by(labels)} (rate({series(metric, matchers)}[{window}]))"


def occurrences(selector: str, labels: str, window: str) -> str:
    """Events a counter counted in ``window``, summed by ``labels``.

    increase() needs two samples, but the exporter creates a labelled counter
    at its first increment: a series that appeared within the window counts
    with its whole value (it started from zero after the window began).
    """
    return (
        f"sum{by(labels)} (\n"
        f"  ({selector} unless {selector} offset {window})\n"
        f"  or increase({selector}[{window}])\n"
        ")"
    )


def or_zero(expr: str, other: str) -> str:
    """``expr``, with a zero wherever only ``other`` has a series.

    A task that never failed has no failed series (one that never succeeded no
    succeeded series): ``or other * 0`` stands in the zero, so a ratio shows
    0 % or 100 % instead of vanishing.
    """
    return f"({expr} or {other} * 0)"


def finished(succeeded: str, failed: str) -> str:
    """Runs that ended: succeeded + failed, each side zero-filled."""
    return f"{or_zero(succeeded, failed)}\n+ {or_zero(failed, succeeded)}"


def failure_ratio(failed: str, succeeded: str, finished_runs: str | None = None) -> str:
    """The share of runs that failed: failed / (succeeded + failed).

    A task that only ever fails shows 1, one that never failed 0.
    ``finished_runs`` is a series that already holds the denominator (a
    recording rule of ``finished``).
    """
    whole = finished_runs or f"(\n{finished(succeeded, failed)}\n)"
    return f"{or_zero(failed, succeeded)}\n/ {whole}"


def retry_amplification(retried: str, received: str) -> str:
    """Retries per new task: received counts every attempt, so new = received - retried.

    One retry per task is 1; a storm compounds far above it. The same
    definition for CeleryTaskRetryStorm and the Tasks dashboard.
    """
    return f"{retried}\n/ clamp_min({received} - {retried}, 0)"


def ingress(sent: str, egress: str, depth_change: str) -> str:
    """Messages arriving in a queue per second, in both setups: the task-sent counts
    (``sent``) where the queue has them (the event setup, with task_send_sent_event in
    the publishers); elsewhere what left the queue (``egress``, workers' received
    counts) plus the change of its depth (``depth_change``: deriv() over the same
    window), never below 0. What arrives either leaves or stays: a queue nothing
    leaves counts its growth alone."""
    derived = f"clamp_min(\n  {or_zero(egress, depth_change)}\n  + {depth_change},\n  0\n)"
    return f"{sent}\nor\n{derived}"


def periodic_age(last_success: str, first_unsucceeded: str) -> str:
    """Seconds a periodic task has gone without success: since its last success, or, for
    a task that never succeeded, since beat was first seen sending it. The same for
    CeleryPeriodicTaskMissed and the Tasks dashboard's schedule."""
    return f"(\n  time() - {last_success}\n  or time() - {first_unsucceeded}\n)"


def periodic_limit(beat: str, listed: str) -> str:
    """The longest a periodic task may go without success: the hand-listed limit
    (``listed``, by task name only) where there is one, else beat's (``beat``)."""
    return f"(\n  {beat} * 0 + on (name) group_left () {listed}\n  or {beat}\n)"


def drain_time(length: str, egress: str) -> str:
    """Seconds to work off the backlog at the current egress, new arrivals ignored;
    +Inf for a queue with messages that nothing leaves.

    Arrivals are left out on purpose: in a FIFO queue a task published now waits for the
    messages ahead of it, not for those published after it, so backlog / egress is the
    wait the backlog causes. backlog / (egress - ingress), the time until the queue is
    empty, is infinite for a steady backlog that workers keep up with and swings with
    every wobble of the depth (in the agent setup egress - ingress is -deriv(depth));
    whether a backlog shrinks at all is the trend's question (CeleryQueueClimbing)."""
    return f"{length}\n/ {or_zero(egress, length)}"


def pool_busy_ratio(window: str, matchers: str = "") -> str:
    """Busy pool processes as a share of the pool, each averaged over ``window``: 1 for a
    worker whose every process ran a task all along. The same for CeleryWorkerPoolSaturated
    and CeleryWorkerPrefetchHoarding (the hoarder's saturation, the other worker's idling)."""
    busy = series("celery_worker_pool_busy_processes", matchers)
    processes = series("celery_worker_pool_processes", matchers)
    return f"avg_over_time({busy}[{window}])\n/ avg_over_time({processes}[{window}])"


def seconds_until(gauge: str, window: str, bound: str) -> str:
    """Seconds until ``gauge`` reaches ``bound`` at its growth over ``window`` (deriv: the
    least-squares slope), 0 once it is there; no result where it does not grow."""
    return f"clamp_min(\n  ({bound} - {gauge})\n  / (deriv({gauge}[{window}]) > 0),\n  0\n)"


# -- scoping ---------------------------------------------------------------------------

#: Words followed by a label list in parentheses, which is not an expression.
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: Aggregation operators: ``sum by (x) (...)`` puts a clause between name and "(".
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
#: Prometheus' own series: the alerts' (they carry the labels of the alerts, not of
#: targets), and ``up``, which has no ``broker``: the rules join it with a target's own
#: series, which carry the selector.
_UNSCOPED = {"ALERTS", "ALERTS_FOR_STATE", "up"}
_TOKEN = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)'
    r"|(?P<range>\[[^\]]*\])"
    r"|(?P<variable>\$\{?\w+\}?)"
    r"|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*)"
    # the chart template's placeholders (rules/helm.py): a value, or part of a name
    r"|(?P<placeholder>@@[\w:]*@@)"
    r"|(?P<name>[A-Za-z_:](?:[\w:]|@@[\w:]*@@)*)"
    r"|(?P<brace>\{)"
)
_MATCHERS = re.compile(r'\{((?:"(?:[^"\\]|\\.)*"|[^}"])*)\}')


def scope(expr: str, selector: str, *, recorded: bool = False) -> str:
    """``expr`` with ``selector`` added to the matchers of every series it selects.

    Recorded series (names with a colon) are left alone unless ``recorded``:
    the recording rules that make them were scoped already, and they keep
    only some labels. Metric names in strings, ranges, label lists and
    function names are no series.
    """
    if not selector:
        return expr
    out: list[str] = []
    position = 0
    while (match := _TOKEN.search(expr, position)) is not None:
        out.append(expr[position : match.start()])
        position = match.end()
        kind, text = match.lastgroup, match.group()
        if kind == "brace":  # {__name__=~"..."}: a selector without a name
            matchers = _MATCHERS.match(expr, match.start())
            if matchers is None:
                raise ValueError(f"unbalanced braces in {expr!r}")
            out.append(_merged(matchers.group(1), selector))
            position = matchers.end()
            continue
        if kind != "name":
            out.append(text)
            continue
        after = len(expr[position:]) - len(expr[position:].lstrip())
        following = expr[position + after : position + after + 1]
        lowered = text.lower()
        if lowered in _GROUPING and following == "(":
            end = expr.index(")", position) + 1  # a label list has no nested parentheses
            out.append(text + expr[position:end])
            position = end
            continue
        scoped = True
        if (
            following == "("
            or lowered in _KEYWORDS
            or lowered in _AGGREGATIONS
            or lowered in _GROUPING
            or text in _UNSCOPED
            or (":" in text and not recorded)
        ):
            scoped = False
        out.append(text)
        matchers = _MATCHERS.match(expr, position) if following == "{" and after == 0 else None
        if matchers is not None:  # the series' own matchers, with the selector or as they are
            out.append(_merged(matchers.group(1), selector) if scoped else matchers.group())
            position = matchers.end()
        elif scoped:
            out.append(_merged("", selector))
    out.append(expr[position:])
    return "".join(out)


def _merged(existing: str, selector: str) -> str:
    existing = existing.strip().rstrip(",").strip()
    return "{" + (f"{existing}, {selector}" if existing else selector) + "}"
