"""Subprocesses the tests own: started in their own session, stopped by pid.

Every process is started with ``start_new_session=True`` so that it leads a
process group: stopping it can then also reach children it forked (Celery's
prefork pool, Erlang's helpers) without ever signalling anything by name.
Output goes to a log file, which the integration conftest attaches to the
report of a failing test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from tests.support.metrics import Scrape, parse
from tests.support.net import LOOPBACK, Response, free_port, http_get, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signum)


class ManagedProcess:
    """One subprocess with a log file, stopped by its pid (and process group)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
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
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, start_new_session=True)
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


class Scraped(ManagedProcess):
    """A process that serves /metrics on ``port``: the exporter, or a worker's agent."""

    port: int
    WAIT_TIMEOUT = 20.0

    def scrape(self) -> Scrape:
        self.assert_running()
        response = http_get(self.port, "/metrics")
        assert response.status == 200, f"/metrics answered {response.status}: {response.text}"
        return Scrape(response.text, parse(response.text))

    def wait_for(self, predicate: Callable[[Scrape], object], *, timeout: float | None = None,
                 what: str) -> Scrape:
        """Scrapes until ``predicate(scrape)`` is truthy; shows the last scrape on timeout."""
        last: list[Scrape] = []

        def check() -> Scrape | None:
            scrape = self.scrape()
            last[:] = [scrape]
            return scrape if predicate(scrape) else None

        def details() -> str:
            shown = last[0].series_text() if last else "(no scrape)"
            return f"last /metrics scrape of {self.name}:\n{shown}\n{self.tail(40)}"

        result = wait_until(check, timeout=self.WAIT_TIMEOUT if timeout is None else timeout,
                            what=what, details=details, interval=0.1)
        assert result is not None
        return result


class CeleryWorker(ManagedProcess):
    """``celery worker`` for the demo app, as a production worker would run it."""

    def __init__(self, name: str, broker_url: str, log_dir: Path, *, app: str = "demo.app",
                 task_events: bool = True, concurrency: int = 2, queues: str | None = None,
                 extra_env: Mapping[str, str] | None = None, pool: str = "prefork",
                 extra_args: Sequence[str] = ()) -> None:
        self.hostname = f"{name}@test"
        argv = [venv_executable("celery"), "-A", app, "worker", "-c", str(concurrency),
                f"--pool={pool}", "-n", self.hostname, "--loglevel=info"]
        if task_events:
            argv.insert(4, "-E")
        if queues is not None:
            argv += ["-Q", queues]
        argv += extra_args
        env = dict(os.environ)
        env.update(extra_env or {})
        env["CELERY_BROKER_URL"] = broker_url
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env.pop("CELERY_RESULT_BACKEND", None)
        super().__init__(f"worker {self.hostname}", argv, log_dir / f"worker-{name}.log",
                         env=env, cwd=REPO_ROOT)

    def start(self) -> CeleryWorker:
        self.spawn()
        return self

    def stop_gracefully(self, timeout: float = 20.0) -> int | None:
        """SIGTERM: warm shutdown, the worker says goodbye (worker-offline)."""
        return self.stop(timeout=timeout, signum=signal.SIGTERM)


class ExporterProcess(Scraped):
    """``celery-vitals serve`` on a free loopback port, ready once /readyz says so."""

    def __init__(self, broker_url: str, log_dir: Path, *args: str, name: str = "exporter",
                 env: Mapping[str, str] | None = None) -> None:
        self.broker_url = broker_url
        self.args = list(args)
        self.port = 0
        # only the flags (and ``env``) configure it, not the caller's CELERY_VITALS_* variables
        full_env = {key: value for key, value in os.environ.items()
                    if not key.startswith("CELERY_VITALS_")}
        full_env.update(env or {})
        super().__init__(name, [], log_dir / f"{name}.log", env=full_env, cwd=REPO_ROOT)

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> ExporterProcess:
        """Starts on a fresh free port (retrying if it was taken meanwhile)."""
        for _ in range(5):
            self.port = free_port()
            self.argv = [venv_executable("celery-vitals"), "serve",
                         "--broker-url", self.broker_url,
                         "--listen-address", f"{LOOPBACK}:{self.port}", *self.args]
            self.spawn()
            wait_until(lambda: self.listening() or not self.running, timeout=timeout,
                       what=f"{self.name} to listen on port {self.port}", details=self.tail)
            if self.running:
                break
            if "cannot listen" not in self.output(latest_start_only=True):
                self.assert_running()  # failed for another reason: show why
        else:
            raise AssertionError(f"{self.name} could not find a free port\n{self.tail()}")
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def describe(self) -> str:
        """No broker URL here: the log must show only what the exporter itself wrote."""
        return f"celery-vitals serve on port {self.port} {' '.join(self.args)}".rstrip()

    def listening(self) -> bool:
        try:
            return http_get(self.port, "/healthz", timeout=1).status == 200
        except OSError:
            return False

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        self.assert_running()
        return http_get(self.port, path, headers)

    def ready(self) -> bool:
        return self.get("/readyz").status == 200

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_until(self.ready, timeout=timeout, what=f"{self.name} /readyz 200",
                   details=self.tail)

    def wait_unready(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.get("/readyz").status == 503, timeout=timeout,
                   what=f"{self.name} /readyz 503", details=self.tail)



class AgentWorker(CeleryWorker, Scraped):
    """A worker of tests/support/agent_app.py: its agent serves /metrics on ``port``."""

    APP = "tests.support.agent_app"
    WAIT_TIMEOUT = 30.0

    def __init__(self, name: str, broker_url: str, log_dir: Path, *, port: int,
                 **kwargs: object) -> None:
        self.port = port
        env = dict(kwargs.pop("extra_env", None) or {})  # type: ignore[call-overload]
        env["CELERY_VITALS_AGENT_LISTEN_ADDRESS"] = f"{LOOPBACK}:{port}"
        super().__init__(name, broker_url, log_dir, app=self.APP, task_events=False,
                         extra_env=env, **kwargs)  # type: ignore[arg-type]

    def listening(self) -> bool:
        try:
            return http_get(self.port, "/healthz", timeout=1).status == 200
        except OSError:
            return False



class LoopbackServer:
    """A server on a free loopback port, ready once GET /-/ready answers 200 (Prometheus,
    Alertmanager). A subclass names it and gives its command line for a port."""

    NAME = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        """The command line, listening on ``self.address``."""
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        """Starts on a free port (a new one if it was taken meanwhile); ready on /-/ready."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            process = ManagedProcess(f"{self.NAME} :{self.port}", self.argv(),
                                     self.directory / f"{self.NAME}.log", cwd=self.directory)
            self.process = process
            process.spawn()
            if self._wait_ready(process, timeout):
                return self
            if "address already in use" not in process.output(latest_start_only=True):
                process.assert_running()  # failed for another reason: show why
        raise AssertionError(f"{self.NAME} could not find a free port\n{self.tail()}")

    def _wait_ready(self, process: ManagedProcess, timeout: float) -> bool:
        """True once ready, False if the process exited (e.g. the port was taken)."""
        wait_until(lambda: self.ready() or not process.running, timeout=timeout,
                   what=f"{self.NAME} /-/ready on port {self.port}", details=process.tail,
                   interval=0.1)
        return process.running

    def ready(self) -> bool:
        try:
            return http_get(self.port, "/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def tail(self) -> str:
        return self.process.tail() if self.process is not None else f"({self.NAME} never ran)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
