"""``celery-vitals dlq``: list, show, replay and purge dead-lettered Celery messages.

The click commands only. Reading never consumes and moving never loses a message:
each broker's store says how (brokers/redis/dead_letters.py: LRANGE samples, Lua
moves and a recovery list; brokers/amqp/dead_letters.py: unacked deliveries,
publisher confirms before the ack; brokers/sqs/dead_letters.py: receives released at
once, replay and purge refused for SQS's own redrive). What a message is (a Celery
task, or why not) is brokers/dead_letters.py's.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click

from celery_vitals import logs
from celery_vitals.brokers import dead_letters
from celery_vitals.brokers.dead_letters import (
    SAMPLE_SIZE,
    TASK,
    DeadLetterStore,
    Entry,
    Outcome,
    Progress,
    RateLimit,
    Selection,
    error_line,
)
from celery_vitals.config import Config, build


class DlqError(click.ClickException):
    """A one-line error; exit code 1 (broker unreachable, refused operation)."""


class UnknownQueue(click.ClickException):
    exit_code = 2


def connect(config: Config) -> DeadLetterStore:
    """The store of the configured broker; one-line DlqError when it cannot be reached."""
    try:
        return dead_letters.open_store(config)
    except dead_letters.DeadLetterError as error:
        raise DlqError(str(error)) from None


# -- the command group ------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"expected a duration like 90s, 30m, 12h or 7d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_rate(text: str) -> float | None:
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$", text)
    if not match or float(match.group(1)) < 0:
        raise click.BadParameter(f"expected messages per second like 50/s or 600/m, got {text!r}")
    value = float(match.group(1)) / {None: 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return value or None  # 0: unbounded


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.items()) or "-"


@contextlib.contextmanager
def _session(options: Mapping[str, Any]) -> Iterator[tuple[Config, DeadLetterStore]]:
    config = build({k: v for k, v in options.items() if v is not None})
    logs.setup(config.log_level, "text", secrets=config.secrets)
    store = connect(config)
    try:
        yield config, store
    except click.ClickException:
        raise
    except dead_letters.UnknownQueue as error:
        raise UnknownQueue(str(error)) from None
    except dead_letters.DeadLetterError as error:
        raise DlqError(str(error)) from None
    except Exception as error:
        raise DlqError(f"{error_line(error, config)} (broker {config.safe_broker_url})") from None
    finally:
        store.close()


def _check(store: DeadLetterStore, queue: str) -> None:
    """Unknown queue: exit code 2 (the store knows which empty queues exist all the same:
    on Redis, the DLQs named with --dlq)."""
    if not store.exists(queue):
        raise UnknownQueue(f"no queue {queue!r} on the broker")


def _emit(as_json: bool, document: Any, text: str) -> None:
    click.echo(json.dumps(document, indent=2) if as_json else text)


_JSON = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of text (see docs/dlq.md for the shapes).",
)


Decorator = Callable[[Any], Any]

_QUEUE = click.argument("queue")
_TASK = click.option("--task", "task", metavar="NAME", help="Only this task name (a glob).")
_WINDOW = click.option(
    "--window",
    type=click.IntRange(1, 65535),
    default=SAMPLE_SIZE,
    show_default=True,
    help="Most non-matching messages looked past.",
)


def _stacked(*decorators: Decorator) -> Decorator:
    """The decorators applied as if written one above the other, the first on top."""

    def apply(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def group(broker_options: Decorator) -> click.Group:
    """The ``dlq`` command group; ``broker_options`` adds the shared broker options."""

    @click.group("dlq")
    def dlq() -> None:
        """Dead-letter triage: list, show, replay and purge dead-lettered messages."""

    def moving(*own: Decorator, last: Decorator) -> Decorator:
        """The options replay and purge share, declared once, around their own (in --help:
        QUEUE, --task, theirs, --window, the last of theirs, --json, the broker's)."""
        return _stacked(_QUEUE, _TASK, *own, _WINDOW, last, _JSON, broker_options)

    @dlq.command("list")
    @click.argument("queues", nargs=-1)
    @click.option(
        "--sample",
        type=click.IntRange(1),
        default=SAMPLE_SIZE,
        show_default=True,
        help="Most messages read per DLQ; a longer DLQ is sampled.",
    )
    @_JSON
    @broker_options
    def list_(*, queues: tuple[str, ...], sample: int, as_json: bool, **options: Any) -> None:
        """DLQs with depth and a breakdown by task, origin, reason and age."""
        with _session(options) as (config, store):
            names = list(queues) or store.dead_letter_queues(config.dlqs)
            for queue in queues:
                _check(store, queue)
            summaries = [store.summary(queue, sample) for queue in names]
            now = time.time()
            lines = []
            for s in summaries:
                head = f"{s.queue}: {s.depth} messages"
                if s.sampled:
                    head += f" (sampled {s.sample_size})"
                if s.inflight:
                    head += f", {s.inflight} in the recovery list"
                lines += [
                    head,
                    f"  tasks:     {_counts(s.tasks)}",
                    f"  not tasks: {_counts(s.not_tasks)}",
                    f"  origins:   {_counts(s.origins)}",
                    f"  reasons:   {_counts(s.reasons)}",
                    f"  age:       oldest {_age_text(s.as_json(now)['oldest_age_seconds'])}"
                    f", newest {_age_text(s.as_json(now)['newest_age_seconds'])}",
                ]
            if not names:
                lines.append("no dead-letter queues found (name them with --dlq)")
            _emit(as_json, [s.as_json(now) for s in summaries], "\n".join(lines))

    @dlq.command()
    @_QUEUE
    @_TASK
    @click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
    @_JSON
    @broker_options
    def show(*, queue: str, task: str | None, limit: int, as_json: bool, **options: Any) -> None:
        """Messages of a DLQ, oldest first: id, task, args, kwargs, retries, x-death, age."""
        with _session(options) as (_, store):
            _check(store, queue)
            now = time.time()
            shown: list[Entry] = []
            scan = max(limit, SAMPLE_SIZE) if task else limit
            for entry in store.entries(queue, scan):
                if task is None or fnmatch.fnmatchcase(entry.task or "", task):
                    shown.append(entry)
                    if len(shown) >= limit:
                        break
            lines = []
            for e in shown:
                kind = "" if e.kind == TASK else f" [{e.kind}: not replayed without --id]"
                lines.append(
                    f"{e.id or '-'}  {e.task or '-'}{kind}  args={e.args or '-'} "
                    f"kwargs={e.kwargs or '-'} retries={e.retries} "
                    f"origin={e.origin or '-'} reason={e.reason or '-'} "
                    f"age={_age_text(e.age(now))}"
                )
            _emit(as_json, [e.as_json(now) for e in shown], "\n".join(lines) or "no messages")

    @dlq.command()
    @moving(
        click.option(
            "--id",
            "ids",
            metavar="ID",
            multiple=True,
            help="Only these message ids (repeatable); also replays messages that "
            "are not Celery tasks.",
        ),
        click.option("--limit", type=click.IntRange(1), help="Most messages to replay."),
        click.option(
            "--to",
            "to",
            metavar="QUEUE",
            help="Target queue (default: the origin from x-death or x-origin-queue).",
        ),
        click.option(
            "--rate",
            default="100/s",
            show_default=True,
            metavar="N/s",
            help="Most messages a second (0: unbounded).",
        ),
        last=click.option(
            "--dry-run", is_flag=True, help="Show what would be replayed; change nothing."
        ),
    )
    def replay(
        *,
        queue: str,
        task: str | None,
        ids: tuple[str, ...],
        limit: int | None,
        to: str | None,
        rate: str,
        window: int,
        dry_run: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Move messages back to their queue as the same task message (same id, headers)."""
        per_second = parse_rate(rate)
        with _session(options) as (_, store):
            _check(store, queue)
            outcome = Outcome(queue, "replay", dry_run=dry_run)
            progress = Progress(outcome, limit, quiet=as_json)
            store.replay(
                queue,
                Selection(task, frozenset(ids)),
                limit=limit,
                to=to,
                rate=RateLimit(per_second),
                dry_run=dry_run,
                window=window,
                progress=progress,
            )
            progress.tick(force=not progress.tty and not as_json and outcome.done > 0)
            verb = "would replay" if dry_run else "replayed"
            _emit(
                as_json,
                outcome.as_json(),
                f"{verb} {outcome.done} messages from {queue}: {_counts(outcome.targets)}; "
                f"skipped: {_counts(outcome.skipped)}"
                + (f"; recovered {outcome.recovered}" if outcome.recovered else ""),
            )

    @dlq.command()
    @moving(
        click.option("--id", "ids", metavar="ID", multiple=True, help="Only these message ids."),
        click.option(
            "--older-than",
            metavar="DURATION",
            help="Only messages dead-lettered longer ago than this (90s, 30m, 12h, 7d); "
            "messages of unknown age are kept.",
        ),
        click.option("--limit", type=click.IntRange(1), help="Most messages to purge."),
        click.option(
            "--export",
            "export_path",
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="Append each message as a JSON line to FILE before deleting it.",
        ),
        last=click.option("--yes", is_flag=True, help="Do not ask for confirmation."),
    )
    def purge(
        *,
        queue: str,
        task: str | None,
        ids: tuple[str, ...],
        older_than: str | None,
        limit: int | None,
        export_path: str | None,
        window: int,
        yes: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Delete messages of a DLQ (all Celery tasks, or those selected)."""
        age = parse_duration(older_than) if older_than else None
        with _session(options) as (_, store):
            _check(store, queue)
            if not yes:
                what = (
                    " and ".join(
                        filter(
                            None,
                            [
                                f"task {task}" if task else "",
                                f"ids {', '.join(ids)}" if ids else "",
                                f"older than {older_than}" if older_than else "",
                            ],
                        )
                    )
                    or "every Celery task"
                )
                if not sys.stdin.isatty():
                    raise DlqError("refusing to purge without confirmation: pass --yes")
                click.confirm(
                    f"Purge {what} from {queue} ({store.depth(queue)} messages)?",
                    abort=True,
                    err=True,
                )
            outcome = Outcome(queue, "purge")
            progress = Progress(outcome, limit, quiet=as_json)
            with contextlib.ExitStack() as stack:
                export = (
                    stack.enter_context(open(export_path, "a", encoding="utf-8"))
                    if export_path
                    else None
                )
                store.purge(
                    queue,
                    Selection(task, frozenset(ids), age),
                    limit=limit,
                    export=export,
                    window=window,
                    progress=progress,
                )
            _emit(
                as_json,
                outcome.as_json(),
                f"purged {outcome.done} messages from {queue}"
                + (f", exported to {export_path}" if export_path else "")
                + f"; skipped: {_counts(outcome.skipped)}",
            )

    return dlq
