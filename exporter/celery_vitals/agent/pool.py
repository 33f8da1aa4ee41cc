"""What only the worker knows about its pool: processes, busy ones, memory, exits.

Sampled from the worker's main process by the agent's thread (every couple of
seconds) into a plain PoolStats that WorkerCollector reads. Pool processes
are identified by their slot index, never their pid: billiard gives a
replacement process the index of the one it replaces (``Worker.index``), so
a recycled child takes over its slot's series and cardinality stays at the
concurrency.

Exits are counted from billiard's ``on_process_down`` hook, which the pool
calls in the main process after it joined a dead child (its exit code is
known then). Celery's prefork pool sets that hook when it registers with the
event loop, so the agent wraps whatever is there and re-checks at every
sample.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery_vitals.logs import RateLimitedLogger
from celery_vitals.workers import EXIT_REASONS, PoolStats

log = RateLimitedLogger(logging.getLogger(__name__))

EX_RECYCLE = 0x9B  # billiard's exit code for a child that reached its max tasks
MARK = "_celery_vitals_hook"

try:
    PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # not Linux
    PAGE_SIZE = 4096


def exit_reason(exitcode: object) -> str | None:
    """recycled (0, or billiard's recycle code), killed (a signal), failed (other codes)."""
    if type(exitcode) is not int:
        return None
    if exitcode in (0, EX_RECYCLE):
        return "recycled"
    if exitcode < 0:
        return "killed"
    return "failed"


def resident_bytes(pid: int) -> int | None:
    """Resident set size of a process (/proc/<pid>/statm, the same figure as VmRSS)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class PoolWatch:
    """The pool of one WorkController (``worker``), read without touching the broker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self.exits = dict.fromkeys(EXIT_REASONS, 0)
        self.counting = True  # off once the worker shuts down: its children are stopped then

    def billiard_pool(self) -> Any:
        """The prefork pool's billiard Pool, or None (threads, solo, not started yet)."""
        inner = getattr(getattr(self.worker, "pool", None), "_pool", None)
        if inner is None or not isinstance(getattr(inner, "_pool", None), list):
            return None
        return inner if hasattr(inner, "on_process_down") else None

    def hook(self) -> None:
        """Wraps the pool's on_process_down (again, if Celery replaced it meanwhile)."""
        inner = self.billiard_pool()
        if inner is None:
            return
        original = inner.on_process_down
        if getattr(original, MARK, False):
            return

        def on_process_down(process: Any) -> Any:
            try:
                self.process_exited(process)
            except Exception:
                log.warn_every(
                    "exit", "celery-vitals agent: could not record a process exit", exc_info=True
                )
            if original is not None:
                return original(process)
            return None

        setattr(on_process_down, MARK, True)
        inner.on_process_down = on_process_down

    def process_exited(self, process: Any) -> None:
        reason = exit_reason(getattr(process, "exitcode", None))
        if reason is not None and self.counting:
            self.exits[reason] += 1

    def sample(self) -> PoolStats:
        from celery.worker import state

        self.hook()
        pool = getattr(self.worker, "pool", None)
        processes: int | None
        try:
            processes = int(pool.num_processes) if pool is not None else None
        except Exception:  # not started yet, or a pool without the property
            processes = None
        active = len(state.active_requests)
        busy = min(active, processes) if processes is not None else None
        qos = getattr(getattr(self.worker, "consumer", None), "qos", None)
        prefetch = getattr(qos, "value", None)
        memory: dict[str, float] = {}
        main = resident_bytes(self.pid)
        if main is not None:
            memory["main"] = main
        inner = self.billiard_pool()
        if inner is not None:
            for process in list(inner._pool):
                index, pid = getattr(process, "index", None), getattr(process, "pid", None)
                if type(index) is not int or type(pid) is not int:
                    continue
                rss = resident_bytes(pid)
                if rss:  # 0: a zombie not reaped yet
                    memory[str(index)] = rss
        return PoolStats(
            processes=processes,
            busy=busy,
            prefetch_limit=prefetch if type(prefetch) is int else None,
            eta_tasks=len(state.scheduled_requests),
            memory=memory,
            exits=dict(self.exits),
        )
