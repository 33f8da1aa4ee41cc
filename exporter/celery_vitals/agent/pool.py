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

A child the pool itself ends for its hard time limit dies by a signal too
(SIGTERM, then SIGKILL after 0.1 s), like one the OOM killer ends: the exit
code cannot tell them apart. The pool's own kill can: billiard's
``TimeoutHandler.on_hard_timeout(job)`` fails the job with TimeLimitExceeded,
runs Celery's ``Request.on_timeout`` and then calls
``self._trywaitkill(process)`` on the process running the job, and nothing
else calls ``_trywaitkill``. Both ways to a hard time limit go through it:
Celery's event loop (``AsynPool._on_hard_timeout`` -> ``pool.on_hard_timeout``,
the handler's bound method) and the handler's thread without one. It is looked
up on the handler at each call, so the agent wraps it on the pool's
``_timeout_handler`` (Celery's prefork pool always enables it) and notes the
pid; that pid's exit is then counted as ``time_limit``, not ``killed``.

A child whose task was revoked with ``terminate=True`` (or cancelled by the
worker when it lost its broker connection) is signalled by the pool too:
Celery's ``Request.terminate`` calls billiard's ``Pool.terminate_job(pid,
sig)``, which marks that process ``_job_terminated`` once the signal is sent
(billiard reads the same mark to report the task as terminated rather than
lost). Its exit is counted as ``terminated``: someone asked for it, no outside
killer is at work.

Each part of a sample (pool processes, busy processes, memory, exits, ETA
tasks, prefetch) is read on its own through ``Features.read``: a part that
fails is left out of that sample (its series absent, its feature 0) and the
others are exported. What each Celery minor has, 5.3 to 5.7:

- ETA tasks: ``celery.worker.state.scheduled_requests`` from 5.7 on; before,
  the consumer's timer entries whose first argument is a request (what
  ``celery inspect scheduled`` lists, in every version).
- pool processes: billiard's process count under prefork; the pool's
  ``limit`` (its concurrency) under the others, because before 5.7 the gevent
  pool's ``num_processes`` counted the greenlets running, not the pool's size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery_vitals.agent.features import Features, Unavailable
from celery_vitals.logs import RateLimitedLogger
from celery_vitals.workers import EXIT_REASONS, PoolStats

rate_limited = RateLimitedLogger(logging.getLogger(__name__))

EX_RECYCLE = 0x9B  # billiard's exit code for a child that reached its max tasks
MARK = "_celery_vitals_hook"
MAX_TIME_LIMITED = 1024  # pids ended for a time limit whose exit was not seen yet (bounded)

try:
    PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # not Linux
    PAGE_SIZE = 4096


def exit_reason(exitcode: object) -> str | None:
    """recycled (0, or billiard's recycle code), killed (a signal), failed (other codes).

    The exit code alone: a child the pool ended for its hard time limit is told apart
    by its pid (PoolWatch.time_limited), not here."""
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
    """The pool of one WorkController (``worker``), read without touching the broker.

    ``prefork``: the worker runs Celery's prefork pool (billiard's processes
    are expected, and their memory and exits with them).
    """

    def __init__(
        self, worker: Any, features: Features | None = None, prefork: bool = False
    ) -> None:
        self.worker = worker
        self.features = features if features is not None else Features("unknown")
        self.prefork = prefork
        self.pid = os.getpid()
        self.exits = dict.fromkeys(EXIT_REASONS, 0)
        self.counting = True  # off once the worker shuts down: its children are stopped then
        # pids the pool is ending for their hard time limit, until their exit is seen
        self.time_limited: dict[int, bool] = {}

    def billiard_pool(self) -> Any:
        """The prefork pool's billiard Pool, or None (threads, solo, not started yet)."""
        inner = getattr(getattr(self.worker, "pool", None), "_pool", None)
        if inner is None or not isinstance(getattr(inner, "_pool", None), list):
            return None
        return inner if hasattr(inner, "on_process_down") else None

    def hook(self) -> None:
        """Wraps the pool's on_process_down (again, if Celery replaced it meanwhile) and
        its time-limit kill."""
        inner = self.billiard_pool()
        if inner is None:
            return
        self.hook_time_limit(inner)
        original = inner.on_process_down
        if getattr(original, MARK, False):
            return

        def on_process_down(process: Any) -> Any:
            try:
                self.process_exited(process)
            except Exception:
                rate_limited.warn_every(
                    "exit", "celery-vitals agent: could not record a process exit", exc_info=True
                )
            if original is not None:
                return original(process)
            return None

        setattr(on_process_down, MARK, True)
        inner.on_process_down = on_process_down

    def hook_time_limit(self, inner: Any) -> None:
        """Wraps the timeout handler's ``_trywaitkill(process)``: billiard's kill of a
        process whose job exceeded its hard time limit (its only caller is
        ``TimeoutHandler.on_hard_timeout``)."""
        handler: Any = getattr(inner, "_timeout_handler", None)
        original = getattr(handler, "_trywaitkill", None)
        if original is None or getattr(original, MARK, False):
            return

        def _trywaitkill(process: Any) -> Any:
            try:  # noted before the signal: the exit can only come after it
                self.time_limit_kill(process)
            except Exception:
                rate_limited.warn_every(
                    "time_limit",
                    "celery-vitals agent: could not record a time-limit kill",
                    exc_info=True,
                )
            return original(process)

        setattr(_trywaitkill, MARK, True)
        handler._trywaitkill = _trywaitkill

    def time_limit_kill(self, process: Any) -> None:
        pid = getattr(process, "pid", None)
        if type(pid) is not int:
            return
        self.time_limited[pid] = True
        while len(self.time_limited) > MAX_TIME_LIMITED:  # exits never seen: oldest out
            del self.time_limited[next(iter(self.time_limited))]

    def process_exited(self, process: Any) -> None:
        reason = exit_reason(getattr(process, "exitcode", None))
        pid = getattr(process, "pid", None)
        ended = type(pid) is int and self.time_limited.pop(pid, False)
        if reason is not None and ended:
            reason = "time_limit"  # whatever its signal (SIGTERM, or SIGKILL 0.1 s later)
        elif reason == "killed" and getattr(process, "_job_terminated", False) is True:
            reason = "terminated"  # revoke(terminate=True): the pool sent the signal
        if reason is not None and self.counting:
            self.exits[reason] += 1

    # -- the parts: each raises (Unavailable says why) rather than guess ----------

    def _prefork_pool(self) -> Any:
        inner = self.billiard_pool()
        if inner is None:
            raise Unavailable(
                "the prefork pool's processes are not where the agent reads them "
                "(worker.pool._pool: a billiard Pool with _pool and on_process_down)"
            )
        return inner

    def pool_processes(self) -> int:
        pool = getattr(self.worker, "pool", None)
        if pool is None:
            raise Unavailable("the worker has no pool")
        if self.prefork:
            self._prefork_pool()
            value, where = pool.num_processes, "num_processes"  # billiard's live count
        else:  # the concurrency (gevent's num_processes counted running greenlets < 5.7)
            value, where = getattr(pool, "limit", None), "limit"
        if type(value) is not int or value < 0:
            raise Unavailable(f"{type(pool).__name__}.{where} is {value!r}, not a process count")
        return value

    @staticmethod
    def active_tasks() -> int:
        from celery.worker import state

        return len(state.active_requests)

    def busy_processes(self, processes: int | None) -> int:
        active = self.active_tasks()
        return active if processes is None else min(active, processes)

    def memory(self) -> dict[str, float]:
        main = resident_bytes(self.pid)
        if main is None:
            raise Unavailable(f"/proc/{self.pid}/statm cannot be read")
        memory: dict[str, float] = {"main": main}
        if not self.prefork:
            return memory
        processes = list(self._prefork_pool()._pool)
        slots = 0
        for process in processes:
            index, pid = getattr(process, "index", None), getattr(process, "pid", None)
            if type(index) is not int or type(pid) is not int:
                continue  # not started yet
            slots += 1
            rss = resident_bytes(pid)
            if rss:  # 0: a zombie not reaped yet
                memory[str(index)] = rss
        if processes and not slots:
            raise Unavailable("the pool's processes carry no slot index and pid (Worker.index)")
        return memory

    def exit_counts(self) -> dict[str, int]:
        if self.prefork:
            self.hook()
            inner = self._prefork_pool()
            if not getattr(inner.on_process_down, MARK, False):
                raise Unavailable("the pool's on_process_down hook cannot be wrapped")
            # without it a time-limit kill would count as killed (and page as one)
            kill = getattr(getattr(inner, "_timeout_handler", None), "_trywaitkill", None)
            if not getattr(kill, MARK, False):
                raise Unavailable(
                    "the pool's time-limit kill (worker.pool._pool._timeout_handler."
                    "_trywaitkill) cannot be wrapped: time-limit exits would count as killed"
                )
        return dict(self.exits)  # other pools have no processes that could exit

    def eta_tasks(self) -> int:
        from celery.worker import state

        scheduled = getattr(state, "scheduled_requests", None)
        if scheduled is not None:  # Celery 5.7 and later
            return len(scheduled)
        return self._timer_requests()

    def _timer_requests(self) -> int:
        """Requests waiting in the consumer's timer: what ``celery inspect scheduled`` lists
        (celery.worker.control._iter_schedule_requests, the same in 5.3 to 5.7)."""
        from celery.worker.request import Request

        consumer = getattr(self.worker, "consumer", None)
        schedule = getattr(getattr(consumer, "timer", None), "schedule", None)
        # the timer's own container, copied (no sorted snapshot: thousands of ETA tasks
        # are common): kombu's Timer keeps a heap list, gevent's and eventlet's a set
        entries = getattr(schedule, "_queue", None)
        if not isinstance(entries, (list, set)):
            entries = getattr(schedule, "queue", None)
        if entries is None:
            raise Unavailable(
                "neither celery.worker.state.scheduled_requests (Celery 5.7+) nor the "
                "consumer's timer queue (consumer.timer.schedule) exists"
            )
        count = 0
        for waiting in list(entries):
            args = getattr(getattr(waiting, "entry", None), "args", None)
            if args and isinstance(args[0], Request):
                count += 1
        return count

    def prefetch(self) -> int:
        qos = getattr(getattr(self.worker, "consumer", None), "qos", None)
        value = getattr(qos, "value", None)
        if type(value) is not int:
            raise Unavailable(f"the consumer's QoS value (consumer.qos.value) is {value!r}")
        return value

    # -- the sample ----------------------------------------------------------------

    def sample(self) -> PoolStats:
        """Every part, each on its own: a failing one is None (or empty), the rest stand."""
        read: Callable[..., Any] = self.features.read
        processes = read("pool_processes", self.pool_processes)
        memory = read("memory", self.memory)
        exits = read("exits", self.exit_counts)
        return PoolStats(
            processes=processes,
            busy=read("busy_processes", lambda: self.busy_processes(processes)),
            prefetch_limit=read("prefetch", self.prefetch),
            eta_tasks=read("eta_tasks", self.eta_tasks),
            memory=memory or {},
            exits=exits or {},
        )
