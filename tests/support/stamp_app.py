"""The agent app (tests/support/agent_app.py) with the tasks of the retry and countdown
queue-wait tests: a task that notes when each attempt started and when it republished
itself with ``self.retry(countdown=...)``, the tests' own measures."""

from __future__ import annotations

import time
from typing import Any

from tests.support.agent_app import app

__all__ = ["app"]


def _note(path: str, seconds: float) -> None:
    with open(path, "w") as out:
        out.write(repr(seconds))


@app.task(name="agent.retry_later", bind=True, max_retries=1)
def retry_later(self: Any, prefix: str, countdown: float) -> None:
    """Attempt N writes its start to ``{prefix}-started-N``; the first then writes the time
    just before its republication to ``{prefix}-republished`` and retries once, due
    ``countdown`` seconds later."""
    started = time.time()
    attempt = self.request.retries
    _note(f"{prefix}-started-{attempt}", started)
    if attempt == 0:
        republished = time.time()
        _note(f"{prefix}-republished", republished)
        raise self.retry(countdown=countdown)
