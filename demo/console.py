"""The demo's terminal: one line at a time, stamped with the wall clock."""

from __future__ import annotations

import sys
import threading
import time

_lock = threading.Lock()


def say(text: str) -> None:
    """Prints ``text`` (each of its lines) after the time of day, at once."""
    stamp = time.strftime("%H:%M:%S")
    lines = text.splitlines() or [""]
    with _lock:
        sys.stdout.write("".join(f"[{stamp}] {line}\n" for line in lines))
        sys.stdout.flush()
