"""Processes under test that serve /metrics: the exporter and agent workers (started and
stopped by pid with stack/, which the demo and the benchmarks use too), scraped into
tests.support.metrics' Scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from stack.net import LOOPBACK, Response, free_port, http_get, wait_until
from stack.processes import REPO_ROOT, ManagedProcess, venv_executable
from stack.workers import CeleryWorker
from tests.support.metrics import Scrape, parse

__all__ = ["AgentWorker", "ExporterProcess", "Scraped"]


class Scraped(ManagedProcess):
    """A process that serves /metrics on ``port``: the exporter, or a worker's agent."""

    port: int
    WAIT_TIMEOUT = 20.0

    def scrape(self) -> Scrape:
        self.assert_running()
        response = http_get(self.port, "/metrics")
        assert response.status == 200, f"/metrics answered {response.status}: {response.text}"
        return Scrape(response.text, parse(response.text))

    def wait_for(
        self, predicate: Callable[[Scrape], object], *, timeout: float | None = None, what: str
    ) -> Scrape:
        """Scrapes until ``predicate(scrape)`` is truthy; shows the last scrape on timeout."""
        last: list[Scrape] = []

        def check() -> Scrape | None:
            scrape = self.scrape()
            last[:] = [scrape]
            return scrape if predicate(scrape) else None

        def details() -> str:
            shown = last[0].series_text() if last else "(no scrape)"
            return f"last /metrics scrape of {self.name}:\n{shown}\n{self.tail(40)}"

        result = wait_until(
            check,
            timeout=self.WAIT_TIMEOUT if timeout is None else timeout,
            what=what,
            details=details,
            interval=0.1,
        )
        assert result is not None
        return result


class ExporterProcess(Scraped):
    """``celery-vitals serve`` on a free loopback port, ready once /readyz says so."""

    def __init__(
        self,
        broker_url: str,
        log_dir: Path,
        *args: str,
        name: str = "exporter",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.args = list(args)
        self.port = 0
        # only the flags (and ``env``) configure it, not the caller's CELERY_VITALS_* variables
        full_env = {
            key: value for key, value in os.environ.items() if not key.startswith("CELERY_VITALS_")
        }
        full_env.update(env or {})
        super().__init__(name, [], log_dir / f"{name}.log", env=full_env, cwd=REPO_ROOT)

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> ExporterProcess:
        """Starts on a fresh free port (retrying if it was taken meanwhile)."""
        for _ in range(5):
            self.port = free_port()
            self.argv = [
                venv_executable("celery-vitals"),
                "serve",
                "--broker-url",
                self.broker_url,
                "--listen-address",
                f"{LOOPBACK}:{self.port}",
                *self.args,
            ]
            self.spawn()
            wait_until(
                lambda: self.listening() or not self.running,
                timeout=timeout,
                what=f"{self.name} to listen on port {self.port}",
                details=self.tail,
            )
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
        wait_until(self.ready, timeout=timeout, what=f"{self.name} /readyz 200", details=self.tail)

    def wait_unready(self, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.get("/readyz").status == 503,
            timeout=timeout,
            what=f"{self.name} /readyz 503",
            details=self.tail,
        )


class AgentWorker(CeleryWorker, Scraped):
    """A worker of tests/support/agent_app.py: its agent serves /metrics on ``port``."""

    APP = "tests.support.agent_app"
    WAIT_TIMEOUT = 30.0

    def __init__(
        self, name: str, broker_url: str, log_dir: Path, *, port: int, **kwargs: object
    ) -> None:
        self.port = port
        env = dict(kwargs.pop("extra_env", None) or {})  # type: ignore[call-overload]
        env["CELERY_VITALS_AGENT_LISTEN_ADDRESS"] = f"{LOOPBACK}:{port}"
        super().__init__(
            name, broker_url, log_dir, app=self.APP, task_events=False, extra_env=env, **kwargs
        )  # type: ignore[arg-type]

    def listening(self) -> bool:
        try:
            return http_get(self.port, "/healthz", timeout=1).status == 200
        except OSError:
            return False
