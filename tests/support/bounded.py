"""A call that must return (or raise) on its own, checked without timing it.

Tests prove that a call gives up by itself (a probe against a dead or hung broker)
with a generous deadline, never by measuring how long it took: speed is the
benchmarks' business (benchmarks/recovery.py), where a loaded host shows as a
ratio and not as a red test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Far above any timeout a test configures (at most a few seconds), far below
#: pytest-timeout's 120 s: only a call that hangs reaches it.
HANG = 30.0


def bounded_call(call: Callable[[], T], *, what: str, deadline: float = HANG) -> T:
    """``call()``'s result, or its exception re-raised here (so ``pytest.raises`` works).

    It runs in a daemon thread; AssertionError naming ``what`` if it has not returned
    after ``deadline`` seconds (the thread is then abandoned, still blocked).
    """
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as error:  # handed to the caller, whatever it is
            outcome.append((False, error))

    thread = threading.Thread(target=run, name=f"bounded: {what}", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise AssertionError(f"{what} had not returned after {deadline:g}s: it hangs")
    returned, value = outcome[0]
    if not returned:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
