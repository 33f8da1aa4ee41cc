"""Cardinality guard: every label value passes through one of these.

A Prometheus series lives for as long as the process; one hostile or buggy
producer (a task name built from a uuid, a 10 kB name) must not be able to
grow the exporter's memory or the TSDB without bound.
"""

from __future__ import annotations

import re

OTHER = "other"
UNKNOWN = "unknown"

# Exception reprs look like "ValueError('bad')" or "celery.exceptions.Retry(...)".
_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(?:\(|:|$)")
_NOT_REGISTERED = re.compile(r"\s*NotRegistered\(\s*(['\"])(?P<name>.*)\1\s*\)\s*$", re.DOTALL)


class LabelGuard:
    """Admits up to ``cap`` distinct values of one label; the rest become ``other``.

    The hot path is one set lookup for a value already admitted.
    ``folded`` counts replacements by reason (``cap``, ``too_long``, ``not_a_string``).
    """

    __slots__ = ("admitted", "cap", "folded", "label", "max_length")

    def __init__(self, label: str, cap: int, max_length: int = 200) -> None:
        self.label = label
        self.cap = cap
        self.max_length = max_length
        self.admitted: set[str] = set()
        self.folded: dict[str, int] = {}

    def __call__(self, value: object) -> str:
        try:
            if value in self.admitted:
                return value  # type: ignore[return-value,unused-ignore]  # only str is admitted
        except TypeError:  # unhashable: a list or dict where a name belongs
            return self._fold("not_a_string")
        return self._admit(value)

    def _admit(self, value: object) -> str:
        if not isinstance(value, str) or not value:
            return self._fold("not_a_string")
        if len(value) > self.max_length or not value.isprintable():
            return self._fold("too_long" if len(value) > self.max_length else "unprintable")
        if len(self.admitted) >= self.cap:
            return self._fold("cap")
        self.admitted.add(value)
        return value

    def _fold(self, reason: str) -> str:
        self.folded[reason] = self.folded.get(reason, 0) + 1
        return OTHER


# Wrappers whose repr hides the real exception (billiard wraps time limits and
# WorkerLostError this way); the traceback's last line names the real one.
_WRAPPERS = frozenset({"ExceptionWithTraceback", "ExceptionInfo", UNKNOWN})


def exception_class(text: object, traceback: object = None) -> str:
    """The class name in a task-failed ``exception`` field, never its message."""
    name = _class_name(text)
    if name in _WRAPPERS and isinstance(traceback, str):
        lines = traceback.rstrip().rsplit("\n", 1)
        if lines and not lines[-1].startswith(" "):
            inner = _class_name(lines[-1])
            if inner != UNKNOWN:
                return inner
    return name


def _class_name(text: object) -> str:
    if not isinstance(text, str):
        return UNKNOWN
    match = _EXCEPTION_CLASS.match(text)
    if match is None:
        return UNKNOWN
    return match.group(1).rsplit(".", 1)[-1]


def not_registered_name(text: object) -> str | None:
    """The task name in ``NotRegistered('name')``, as workers report unknown tasks."""
    if not isinstance(text, str) or not text.lstrip().startswith("NotRegistered("):
        return None
    match = _NOT_REGISTERED.match(text)
    return match.group("name") if match else None
