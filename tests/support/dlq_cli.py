"""Running ``celery-vitals dlq ...`` as a user does: a subprocess, broker URL from the
environment (never on the command line), JSON read back from stdout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from stack.processes import REPO_ROOT, ManagedProcess, venv_executable


def env(broker_url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_VITALS_")}
    clean.update({"CELERY_VITALS_BROKER_URL": broker_url, **extra})
    return clean


def run(
    broker_url: str, *args: str, timeout: float = 60.0, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_executable("celery-vitals"), "dlq", *args],
        env=env(broker_url, **extra),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def run_json(broker_url: str, *args: str, **extra: Any) -> Any:
    done = run(broker_url, *args, "--json", **extra)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


def spawn(broker_url: str, log_dir: Path, name: str, *args: str) -> ManagedProcess:
    process = ManagedProcess(
        name,
        [venv_executable("celery-vitals"), "dlq", *args],
        log_dir / f"{name}.log",
        env=env(broker_url),
        cwd=REPO_ROOT,
    )
    process.spawn()
    return process
