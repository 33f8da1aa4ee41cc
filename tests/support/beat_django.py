"""django-celery-beat's database, as its users edit it, for the beat agent tests: run in a
subprocess (Django is set up once per process, on the SQLite file BEAT_DJANGO_DB).

    python -m tests.support.beat_django migrate
    python -m tests.support.beat_django every ENTRY TASK SECONDS   # add or change an entry
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack.processes import REPO_ROOT

SETTINGS = "tests.support.beat_django_settings"


def run(db: Path, *args: str) -> None:
    """One command in a fresh interpreter; AssertionError with its output if it fails."""
    env = dict(os.environ, BEAT_DJANGO_DB=str(db), DJANGO_SETTINGS_MODULE=SETTINGS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.beat_django", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"beat_django {' '.join(args)}: {done.stdout}{done.stderr}"


def every(entry: str, task: str, seconds: int) -> None:
    """The entry runs ``task`` every ``seconds``: saved as the admin saves it (the
    PeriodicTask's save marks the schedule changed, which beat polls)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    interval, _ = IntervalSchedule.objects.get_or_create(
        every=seconds, period=IntervalSchedule.SECONDS
    )
    found = PeriodicTask.objects.filter(name=entry).first()
    if found is None:
        PeriodicTask.objects.create(name=entry, task=task, interval=interval)
        return
    found.interval = interval
    found.task = task
    found.no_changes = False  # beat's own saves set it; an edit is a change
    found.save()


def main(argv: list[str]) -> None:
    import django

    django.setup()
    if argv[0] == "migrate":
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    elif argv[0] == "every":
        every(argv[1], argv[2], int(argv[3]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
