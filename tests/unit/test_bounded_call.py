"""tests/support/bounded.py: a call's result or exception, or a failure naming the hang."""

from __future__ import annotations

import threading

import pytest

from tests.support.bounded import bounded_call


def test_returns_what_the_call_returns() -> None:
    assert bounded_call(lambda: 42, what="the answer") == 42


def test_raises_what_the_call_raises() -> None:
    def refused() -> None:
        raise ConnectionRefusedError("no broker")

    with pytest.raises(ConnectionRefusedError, match="no broker"):
        bounded_call(refused, what="a poll")


def test_a_call_that_never_returns_fails_naming_it() -> None:
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match=r"a poll of a hung broker .* 0\.1s: it hangs"):
            bounded_call(release.wait, what="a poll of a hung broker", deadline=0.1)
    finally:
        release.set()
