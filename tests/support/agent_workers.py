"""Agent workers beyond Harness.agent_worker: another app module, another venv's Celery
(tests/support/celery_versions.py), a listen address of the test's choosing (a port
range), a --logfile. Started until their agent answers, killed by pid at the end."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stack.net import free_port, wait_until
from tests.support.harness import WORKER_START_TIMEOUT
from tests.support.processes import AgentWorker

LISTEN_ADDRESS_ENV = "CELERY_VITALS_AGENT_LISTEN_ADDRESS"
SERVING = re.compile(r"celery-vitals agent: serving https?://\S+:(\d+)/metrics for (\S+)")


class AppWorker(AgentWorker):
    """A worker of ``app`` run by ``celery``, its agent on ``address`` when given (else on
    the free port ``port``, as AgentWorker)."""

    def __init__(
        self,
        name: str,
        broker_url: str,
        log_dir: Path,
        *,
        app: str = AgentWorker.APP,
        celery: str | None = None,
        address: str | None = None,
        logfile: Path | None = None,
        **kwargs: Any,
    ) -> None:
        self.APP = app
        if logfile is not None:
            kwargs["extra_args"] = [*kwargs.get("extra_args", ()), f"--logfile={logfile}"]
        super().__init__(name, broker_url, log_dir, port=kwargs.pop("port", 0), **kwargs)
        if celery is not None:
            self.argv[0] = celery
        self.address = address
        if address is not None and self.env is not None:
            self.env[LISTEN_ADDRESS_ENV] = address
        self.logfile = logfile

    def log(self) -> str:
        """The worker's log: its --logfile, else what it wrote to stdout and stderr."""
        if self.logfile is None:
            return self.output()
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        """Its output's tail and, with a --logfile, that file's tail (where Celery logs)."""
        text = super().tail(lines)
        if self.logfile is not None:
            logged = self.log().splitlines()[-lines:]
            text += f"\n--- last {len(logged)} lines of {self.logfile}:\n" + "\n".join(logged)
        return text

    def serving_port(self) -> int | None:
        """The port its serving line names (the worker's log, at worker_ready)."""
        for match in SERVING.finditer(self.log()):
            if match.group(2) == self.hostname:
                return int(match.group(1))
        return None


class AgentWorkers:
    """The workers one test starts; killed (the whole process group) at close()."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[AppWorker] = []

    def start(self, name: str, broker_url: str, *, wait: bool = True, **kwargs: Any) -> AppWorker:
        """Started; with a listen address, once its serving line names its port; else once
        its agent answers on the free port it was given (``wait=False``: not waited for)."""
        if "address" not in kwargs:
            kwargs.setdefault("port", free_port())
        worker = AppWorker(name, broker_url, self.log_dir, **kwargs)
        self.started.append(worker)
        worker.start()
        if not wait:
            return worker

        def ready() -> bool:
            worker.assert_running()
            if worker.address is not None:
                port = worker.serving_port()
                if port is None:
                    return False
                worker.port = port
            return worker.listening()

        wait_until(
            ready,
            timeout=WORKER_START_TIMEOUT,
            what=f"the agent of {worker.hostname} ({' '.join(worker.argv[:3])})",
            details=worker.tail,
        )
        return worker

    def close(self) -> None:
        """Kills them: everything was asserted, a warm shutdown would only cost time."""
        for worker in reversed(self.started):
            worker.kill()
