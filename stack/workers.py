"""Celery workers as subprocesses: ``celery worker`` of the running environment, with the
repository on PYTHONPATH, its output in a log file, stopped by pid (and process group, so
that no prefork child outlives it)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from stack.processes import REPO_ROOT, ManagedProcess, venv_executable


class CeleryWorker(ManagedProcess):
    """``celery worker`` of ``app`` (the demo's by default), as a production worker runs it."""

    def __init__(
        self,
        name: str,
        broker_url: str,
        log_dir: Path,
        *,
        app: str = "demo.app",
        task_events: bool = True,
        concurrency: int = 2,
        queues: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        pool: str = "prefork",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.hostname = f"{name}@test"
        argv = [
            venv_executable("celery"),
            "-A",
            app,
            "worker",
            "-c",
            str(concurrency),
            f"--pool={pool}",
            "-n",
            self.hostname,
            "--loglevel=info",
        ]
        if task_events:
            argv.insert(4, "-E")
        if queues is not None:
            argv += ["-Q", queues]
        argv += extra_args
        env = dict(os.environ)
        env.update(extra_env or {})
        env["CELERY_BROKER_URL"] = broker_url
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        env.pop("CELERY_RESULT_BACKEND", None)
        super().__init__(
            f"worker {self.hostname}", argv, log_dir / f"worker-{name}.log", env=env, cwd=REPO_ROOT
        )

    def start(self) -> CeleryWorker:
        self.spawn()
        return self

    def stop_gracefully(self, timeout: float = 20.0) -> int | None:
        """SIGTERM: warm shutdown, the worker says goodbye (worker-offline)."""
        return self.stop(timeout=timeout, signum=signal.SIGTERM)
