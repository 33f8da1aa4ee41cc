"""Fails when code imports a third-party package that pyproject.toml does not declare.

The package (exporter/) may import only the standard library, itself, the
distributions in ``[project] dependencies`` and those of the extras users install
for a feature (``sqs``: imported only when that feature is used); everything else
in the repository (tests, benchmarks, demo, scripts) may also use the ``test``
extra. Every declared dependency must carry a version range.
Which distribution provides an import comes from the installed environment
(importlib.metadata), so run it with the project's virtual environment.

    .venv/bin/python scripts/check_imports.py     # exit 1 and one line per problem
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exporter"
OTHERS = ("tests", "benchmarks", "demo", "dashboards", "alerts", "scripts")
OWN = {"celery_vitals", "tests", "benchmarks", "demo", "dashboards", "alerts"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def normalise(name: str) -> str:
    """PEP 503: Foo_Bar and foo.bar are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: Iterable[str]) -> dict[str, str]:
    """Distribution name -> its requirement text."""
    found = {}
    for requirement in requirements:
        match = _NAME.match(requirement.strip())
        if match:
            found[normalise(match.group(0))] = requirement
    return found


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Top-level names of the absolute imports of a file, with their line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def problems(files: Iterable[Path], allowed: dict[str, str]) -> Iterator[str]:
    providers = packages_distributions()
    for path in files:
        for name, line in imports(path):
            if name in sys.stdlib_module_names or name in OWN or name == "__future__":
                continue
            if (path.parent / f"{name}.py").exists() or (path.parent / name).is_dir():
                continue  # a sibling module (a script's own directory is on sys.path)
            distributions = {normalise(d) for d in providers.get(name, ())}
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            if not distributions:
                yield f"{where}: imports {name}, which no installed distribution provides"
            elif not distributions & allowed.keys():
                yield (
                    f"{where}: imports {name} (from {', '.join(sorted(distributions))}), "
                    "which pyproject.toml does not declare"
                )


def unbounded(requirements: dict[str, str]) -> Iterator[str]:
    for name, requirement in sorted(requirements.items()):
        if not re.search(r"[<>=~]=?|===", requirement):
            yield f"pyproject.toml: {name} has no version range ({requirement!r})"


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    runtime = declared(project.get("dependencies", ()))
    for extra, requirements in extras.items():
        if extra != "test":  # a feature's extra (sqs): the package imports it lazily
            runtime.update(declared(requirements))
    everything = {**runtime, **declared(extras.get("test", ()))}
    found = [
        *unbounded(everything),
        *problems(sorted(PACKAGE.rglob("*.py")), runtime),
        *problems(sorted(p for d in OTHERS for p in (ROOT / d).rglob("*.py")), everything),
    ]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
