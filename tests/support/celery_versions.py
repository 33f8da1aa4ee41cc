"""The Celery minors the agent is tested against besides the main venv's (5.7): one
virtual environment each, in .venv-celery/<minor>, built from the pins below.

Each minor is pinned as a lockfile written on the day of its release would pin
it: the Celery patch release, the kombu, billiard, vine, amqp and redis-py
(kombu's redis extra) of that day, Celery's click family, python-dateutil and
tzdata, and gevent with its greenlet for the gevent pool. celery-vitals itself
is installed editable with its declared dependencies, so its ranges are
checked against each lock too (pip fails on a conflict); its other
dependencies (prometheus-client, bcrypt, ...) are not Celery's and are not
pinned.

A venv is reused while its pins and celery-vitals' dependency list are the
ones it was built from (a stamp file records them), else rebuilt. Build them
all, in parallel, with ``python -m tests.support.celery_versions`` (what
scripts/celery_versions.sh runs in CI before pytest); the tests' fixture
builds a missing one itself.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENVS = REPO_ROOT / ".venv-celery"

#: minor -> package -> version, as released together (dates: the packages' uploads to PyPI)
LOCKS: dict[str, dict[str, str]] = {
    # celery 5.3.6: 2023-11-22
    "5.3": {
        "celery": "5.3.6",
        "kombu": "5.3.4",  # 2023-11-16
        "billiard": "4.2.0",
        "vine": "5.1.0",
        "amqp": "5.2.0",
        "redis": "5.0.1",
        "click": "8.1.7",
        "click-didyoumean": "0.3.0",
        "click-plugins": "1.1.1",
        "click-repl": "0.3.0",
        "prompt-toolkit": "3.0.41",
        "python-dateutil": "2.8.2",
        "tzdata": "2023.3",
        "gevent": "23.9.1",
        "greenlet": "3.0.1",
    },
    # celery 5.4.0: 2024-04-17
    "5.4": {
        "celery": "5.4.0",
        "kombu": "5.3.7",  # 2024-04-11
        "billiard": "4.2.0",
        "vine": "5.1.0",
        "amqp": "5.2.0",
        "redis": "5.0.3",
        "click": "8.1.7",
        "click-didyoumean": "0.3.1",
        "click-plugins": "1.1.1",
        "click-repl": "0.3.0",
        "prompt-toolkit": "3.0.43",
        "python-dateutil": "2.9.0.post0",
        "tzdata": "2024.1",
        "gevent": "24.2.1",
        "greenlet": "3.0.3",
    },
    # celery 5.5.3: 2025-06-01
    "5.5": {
        "celery": "5.5.3",
        "kombu": "5.5.4",  # 2025-06-01
        "billiard": "4.2.1",
        "vine": "5.1.0",
        "amqp": "5.3.1",
        "redis": "5.2.1",  # kombu 5.5's redis extra: <=5.2.1
        "click": "8.2.1",
        "click-didyoumean": "0.3.1",
        "click-plugins": "1.1.1",
        "click-repl": "0.3.0",
        "prompt-toolkit": "3.0.51",
        "python-dateutil": "2.9.0.post0",
        "tzdata": "2025.2",
        "gevent": "25.5.1",
        "greenlet": "3.2.2",
    },
    # celery 5.6.3: 2026-03-26
    "5.6": {
        "celery": "5.6.3",
        "kombu": "5.6.2",  # 2025-12-29
        "billiard": "4.2.4",
        "vine": "5.1.0",
        "amqp": "5.3.1",
        "redis": "6.4.0",  # kombu 5.6's redis extra: <6.5
        "click": "8.3.1",
        "click-didyoumean": "0.3.1",
        "click-plugins": "1.1.1.2",
        "click-repl": "0.3.0",
        "prompt-toolkit": "3.0.52",
        "python-dateutil": "2.9.0.post0",
        "tzdata": "2026.1",
        "gevent": "25.9.1",
        "greenlet": "3.3.2",
    },
}

STAMP = "celery-vitals-venv.txt"
TEST_EXTRAS = ("gevent",)  # beyond celery-vitals' dependencies: the gevent pool (pinned above)


@dataclass(frozen=True)
class CeleryVenv:
    minor: str
    path: Path

    @property
    def version(self) -> str:
        """The Celery release it runs."""
        return LOCKS[self.minor]["celery"]

    def executable(self, name: str) -> str:
        return str(self.path / "bin" / name)


def constraints(minor: str) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(LOCKS[minor].items()))


def _stamp(minor: str) -> str:
    """What a venv was built from: its pins, and celery-vitals' own dependency list."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return constraints(minor) + "".join(f"# {dep}\n" for dep in project["dependencies"])


@contextmanager
def _locked(minor: str) -> Iterator[None]:
    """One builder per venv at a time (CI's script and a test fixture, say)."""
    VENVS.mkdir(exist_ok=True)
    ignore = VENVS / ".gitignore"  # git (and so ruff) never look inside
    if not ignore.exists():
        ignore.write_text("# built by tests/support/celery_versions.py\n*\n")
    with (VENVS / f"{minor}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: Sequence[str], what: str) -> str:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONWARNINGS": ""},
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({' '.join(argv)}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def ensure(minor: str) -> CeleryVenv:
    """The venv of ``minor``: reused when built from the same pins, else (re)built; checked
    to run the pinned Celery and kombu."""
    path = VENVS / minor
    venv = CeleryVenv(minor, path)
    stamp = _stamp(minor)
    with _locked(minor):
        python = path / "bin" / "python"
        if python.exists() and (path / STAMP).is_file() and (path / STAMP).read_text() == stamp:
            return venv
        shutil.rmtree(path, ignore_errors=True)
        # no pip of its own: the main venv's pip installs into it (--python), faster
        _run([sys.executable, "-m", "venv", "--without-pip", str(path)], f"venv {minor}")
        pins = path / "constraints.txt"
        pins.write_text(constraints(minor))
        pip = [sys.executable, "-m", "pip", "--python", str(python)]
        _run(
            [*pip, "install", "-q", "-c", str(pins), "-e", str(REPO_ROOT), *TEST_EXTRAS],
            f"installing celery-vitals with Celery {minor}'s lock",
        )
        _run([*pip, "check"], f"pip check of Celery {minor}'s venv")
        found = _run(
            [
                str(python),
                "-c",
                "import celery, kombu; print(celery.__version__, kombu.__version__)",
            ],
            f"importing Celery {minor}",
        ).split()
        wanted = [LOCKS[minor]["celery"], LOCKS[minor]["kombu"]]
        if found != wanted:
            raise RuntimeError(f"{path} runs celery, kombu {found}, not {wanted}")
        (path / STAMP).write_text(stamp)
    return venv


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minors", nargs="*", default=list(LOCKS), help="default: all")
    minors = parser.parse_args(argv).minors
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(minors)) as pool:
        for venv in pool.map(ensure, minors):
            print(f"{venv.path.relative_to(REPO_ROOT)}: celery {venv.version}", flush=True)
    print(f"celery venvs ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
