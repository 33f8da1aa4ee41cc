"""``celery beat`` of tests/support/beat_app.py as a subprocess, its agent on a port of the
test's choosing, scraped like a worker's agent; stopped by pid (stack/processes.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from stack.net import LOOPBACK, free_port, http_get, wait_until
from stack.processes import REPO_ROOT, venv_executable
from tests.support.processes import Scraped

APP = "tests.support.beat_app"
START_TIMEOUT = 45.0


class BeatProcess(Scraped):
    """``celery -A tests.support.beat_app beat --schedule FILE --max-interval 1``: its
    agent serves on ``port`` (a free loopback port unless given)."""

    WAIT_TIMEOUT = 20.0

    def __init__(
        self,
        broker_url: str,
        log_dir: Path,
        *,
        name: str = "beat",
        schedule: Path | None = None,
        scheduler: str | None = None,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        celery: str | None = None,
    ) -> None:
        """``celery``: the ``celery`` to run (another venv's: tests/support/celery_versions.py)."""
        self.port = port or free_port()
        argv = [celery or venv_executable("celery"), "-A", APP, "beat", "--max-interval", "1"]
        argv += ["--loglevel=info"]
        argv += ["--schedule", str(schedule or log_dir / f"{name}-schedule")]
        if scheduler is not None:
            argv += ["--scheduler", scheduler]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_VITALS_")}
        env.update(extra_env or {})
        env["CELERY_BROKER_URL"] = broker_url
        env["CELERY_VITALS_AGENT_LISTEN_ADDRESS"] = f"{LOOPBACK}:{self.port}"
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        super().__init__(name, argv, log_dir / f"{name}.log", env=env, cwd=REPO_ROOT)

    def start(self) -> BeatProcess:
        """Started, and its agent answers /readyz (the schedule was read)."""
        self.spawn()

        def ready() -> bool:
            self.assert_running()
            try:
                return http_get(self.port, "/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(ready, timeout=START_TIMEOUT, what=f"{self.name}'s agent", details=self.tail)
        return self
