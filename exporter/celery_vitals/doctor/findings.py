"""What a doctor's check says: a Finding (ok / warn / fail, what was seen, the fix)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""
    subject: str | None = None  # the worker or queue the finding is about

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "check": self.check,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix or None,
        }
        if self.subject is not None:
            document["subject"] = self.subject
        return document


def names_of(items: Iterable[str], most: int = 5) -> str:
    listed = sorted(items)
    shown = ", ".join(listed[:most])
    return shown + (f" and {len(listed) - most} more" if len(listed) > most else "")
