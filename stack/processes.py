"""Subprocesses the demo, the tests and the benchmarks own: started in their own session,
stopped by pid.

Every process is started with ``start_new_session=True`` so that it leads a
process group: stopping it can then also reach children it forked (Celery's
prefork pool, Erlang's helpers) without ever signalling anything by name.
Output goes to a log file, which the tests' conftest attaches to the report
of a failing test and the demo names when something fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Every process started in this session, so a failing test can show their logs.
STARTED: list[ManagedProcess] = []


def venv_executable(name: str) -> str:
    """A console script of the running interpreter's environment (the venv, also in CI)."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is neither in {VENV_BIN} nor on PATH")
    return found


def executable(name: str, *candidates: Path, package: str | None = None) -> str:
    """The first of ``candidates`` that exists, else ``name`` on PATH; says what to install."""
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install Debian's {package or name} package (scripts/setup.sh does)"
        )
    return found


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signum)


class ManagedProcess:
    """One subprocess with a log file, stopped by its pid (and process group)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None  # wall clock, compared with pytest's call times
        self.stopped_at: float | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0  # where the latest start's output begins

    # -- lifecycle -------------------------------------------------------------

    def spawn(self) -> None:
        """Starts the process; output is appended to the log file."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()
        self._log.write(f"--- {time.strftime('%H:%M:%S')} start: {self.describe()}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        self.started_at, self.stopped_at = time.time(), None
        if self not in STARTED:
            STARTED.append(self)

    def describe(self) -> str:
        """The header line written to the log at each start."""
        return " ".join(self.argv)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running at the deadline."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0, signum: int = signal.SIGTERM) -> int | None:
        """Asks the process to exit, SIGKILLs its group after ``timeout``; idempotent.

        The group is SIGKILLed in any case afterwards, so that no pool child or
        helper the process forked outlives it.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signum)
            if self.wait(timeout) is None:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        _signal_group(self.pid, signal.SIGKILL)
        if self.stopped_at is None:
            self.stopped_at = time.time()
        self._close_log()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL for the whole group: a crash, no goodbye."""
        if self.process is None:
            return
        _signal_group(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        if self.stopped_at is None:
            self.stopped_at = time.time()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- output ------------------------------------------------------------------

    def output(self, *, latest_start_only: bool = False) -> str:
        """Everything the process wrote (every start), or only since its latest start."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset if latest_start_only else 0)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        text = self.output().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.name} ({self.log_path}):\n" + "\n".join(text)

    def lived_during(self, start: float, stop: float) -> bool:
        """Whether the process was alive at some point of [start, stop] (wall clock)."""
        if self.started_at is None or self.started_at > stop:
            return False
        return self.stopped_at is None or self.stopped_at >= start

    def assert_running(self) -> None:
        if not self.running:
            raise AssertionError(f"{self.name} exited with code {self.returncode}\n{self.tail()}")
