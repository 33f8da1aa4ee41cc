"""An ImportError on the way to the broker is a broken installation, not a broker problem.

kombu imports a transport's module, and the third-party packages that module
imports, only when a connection is first used: a package missing from the
environment (kombu's Redis transport needs ``packaging``, which kombu declares
only under its ``redis`` extra) surfaces where network errors do. Every place
that reports a broker error asks ``problem`` first, so that the user reads
which package is missing and the pip command that installs it, not advice to
check the network.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import TracebackType

#: Import names whose distribution has another name (what pip must be told).
DISTRIBUTIONS = {"yaml": "PyYAML", "dateutil": "python-dateutil"}
#: Import names that celery-vitals installs only with one of its extras.
EXTRAS = {"boto3": "sqs", "botocore": "sqs"}
#: kombu's transport modules as users call them.
TRANSPORTS = {"redis": "Redis", "pyamqp": "AMQP", "amqp": "AMQP", "SQS": "SQS"}


@dataclass(frozen=True)
class Problem:
    """What is missing (``detail``) and the pip command that installs it (``fix``)."""

    detail: str
    fix: str

    def __str__(self) -> str:
        return f"{self.detail}: {self.fix}"


def problem(error: BaseException) -> Problem | None:
    """The installation problem behind ``error`` (an ImportError, or one raised while
    handling one), None for any other error."""
    found = _import_error(error)
    if found is None:
        return None
    where = _needed_by(found)
    needed_by = f" (needed by {where})" if where else ""
    missing = found.name if isinstance(found, ModuleNotFoundError) else None
    top = missing.partition(".")[0] if missing else ""
    if top and not _importable(top):
        if top in EXTRAS:
            extra = EXTRAS[top]
            return Problem(
                f"installation problem: Python package {top!r} is missing{needed_by}; "
                f"celery-vitals installs it with its {extra!r} extra",
                f"pip install 'celery-vitals[{extra}]'",
            )
        distribution = DISTRIBUTIONS.get(top, top)
        return Problem(
            f"installation problem: Python package {distribution!r} is missing{needed_by}",
            f"pip install --upgrade 'celery-vitals' (or: pip install '{distribution}')",
        )
    # a module missing from a package that is there, or a name it does not have:
    # versions that do not go together
    text = f"{type(found).__name__}: {found}".splitlines()[0]
    return Problem(
        f"installation problem: {text}{needed_by}",
        "pip install --upgrade --force-reinstall 'celery-vitals' (its dependencies' "
        "versions do not go together)",
    )


def explain(error: BaseException) -> str:
    """One line for a log: the installation problem, or ``Type: message`` as before."""
    found = problem(error)
    return str(found) if found is not None else f"{type(error).__name__}: {error}"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module without a spec: it is there
        return True


def _import_error(error: BaseException) -> ImportError | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ImportError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _needed_by(error: ImportError) -> str | None:
    """Who imported the missing module: the innermost frame outside importlib."""
    module: str | None = None
    frame: TracebackType | None = error.__traceback__
    while frame is not None:
        name = frame.tb_frame.f_globals.get("__name__")
        if isinstance(name, str) and name != "importlib" and not name.startswith("importlib."):
            module = name
        frame = frame.tb_next
    if module is None or module == "__main__":
        return None
    package, _, transport = module.rpartition(".")
    if package == "kombu.transport":
        return f"kombu's {TRANSPORTS.get(transport, transport)} transport"
    return module
