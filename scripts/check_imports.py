"""Fails when code imports a third-party package that pyproject.toml does not declare.

The package (exporter/) may import only the standard library, itself, the
distributions in ``[project] dependencies`` and those of the extras users install
for a feature (``sqs``: imported only when that feature is used); everything else
in the repository (tests, benchmarks, demo, scripts) may also use the ``test``
extra. Every declared dependency must carry a version range.
Which distribution provides an import comes from the installed environment
(importlib.metadata), so run it with the project's virtual environment.

It also keeps the package's layout (docs/development.md, "Layout"):

1. only ``brokers/<name>/`` imports a broker's client library (redis, py-amqp,
   boto3/botocore) or reaches into another object's private attribute
   (``channel._q_for_pri``): kombu's and py-amqp's privates stay with their broker;
2. nothing outside ``brokers/`` tests the transport (``config.transport == ...``):
   it asks the broker object;
3. the commands (exporter.py, agent/, dlq.py, doctor/, rules/command.py) never
   import each other: what they share lives below them (rules/ outside its command
   is the alert and dashboard builders, which the doctor reads);
4. no ``_private`` name is imported from another folder;
5. only decode.py imports a decompressor (zlib, bz2, lzma, gzip): events and dead
   letters share one decoder;
6. no import cycle inside the package (imports under ``if TYPE_CHECKING:`` aside).

    .venv/bin/python scripts/check_imports.py     # exit 1 and one line per problem
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exporter"
OTHERS = ("tests", "benchmarks", "demo", "stack", "dashboards", "alerts", "scripts")
OWN = {"celery_vitals", "tests", "benchmarks", "demo", "stack", "dashboards", "alerts"}
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


BROKER_LIBRARIES = frozenset({"redis", "amqp", "boto3", "botocore"})
DECOMPRESSORS = frozenset({"zlib", "bz2", "lzma", "gzip"})
COMMANDS = ("exporter", "agent", "dlq", "doctor", "rules")
DECODER = "decode"
DECOMPRESSING = frozenset(
    {"decompress", "decompressobj", "BZ2Decompressor", "LZMADecompressor", "GzipFile", "open"}
)
ENTRY = frozenset({"", "cli", "__main__"})  # the click root mounts every command
# the agent hooks Celery's worker from inside (its pool, its request class): a
# Celery private it reaches is documented where it does
CELERY_HOOKS = frozenset({"agent"})
# namedtuple's public API starts with an underscore
NOT_PRIVATE = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})


@dataclass(frozen=True)
class Module:
    name: str  # dotted, relative to the package: "brokers.redis.probe", "" for the root
    path: Path
    tree: ast.Module
    is_package: bool

    @property
    def folder(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def parts(self) -> list[str]:
        return self.name.split(".") if self.name else []


def modules(root: Path) -> dict[str, Module]:
    """Every module of the package under root, by its dotted name inside the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        name = ".".join(parts)
        found[name] = Module(name, path, tree, is_package)
    return found


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements under ``if TYPE_CHECKING:``."""
    hidden: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                hidden.update(ast.walk(child))
    return hidden


def _own_imports(
    module: Module, package: str, known: Mapping[str, Module]
) -> Iterator[tuple[str, list[str], int, bool]]:
    """(imported module inside the package, names taken from it, line, type-only)."""
    hidden = _type_checking_only(module.tree)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    inner = alias.name[len(package) + 1 :]
                    yield inner, [], node.lineno, node in hidden
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.parts if module.is_package else module.parts[:-1]
                base = base[: len(base) - node.level + 1]
                inner = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                inner = node.module[len(package) + 1 :]
            else:
                continue
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{inner}.{n}".strip(".") in known]
            taken = [n for n in names if n not in submodules]
            for name in submodules:
                yield f"{inner}.{name}".strip("."), [], node.lineno, node in hidden
            if taken or not submodules:
                yield inner, taken, node.lineno, node in hidden


def _command(name: str) -> str | None:
    """The command a module belongs to: rules/ is the rule and dashboard builders,
    shared (the doctor reads the shipped alert names); its command is rules.command."""
    if name == "rules.command" or name.startswith("rules.command."):
        return "rules"
    head = name.split(".", maxsplit=1)[0]
    return head if head in COMMANDS and head != "rules" else None


def _under_broker(module: Module) -> bool:
    return len(module.parts) >= 3 and module.parts[0] == "brokers"


def _tests_transport(node: ast.AST) -> bool:
    if not isinstance(node, ast.Compare):
        return False
    for side in (node.left, *node.comparators):
        if isinstance(side, ast.Attribute) and side.attr == "transport":
            return True
        if isinstance(side, ast.Name) and side.id == "transport":
            return True
    return False


def layout(root: Path, package: str = "celery_vitals") -> Iterator[str]:
    """The layout rules of the module docstring, one line per breach."""
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for module in known.values():
        where = (
            module.path.relative_to(root.parent)
            if root.parent in module.path.parents
            else module.path
        )
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                tops = (
                    [alias.name.split(".")[0] for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [(node.module or "").split(".")[0]]
                )
                for top in tops:
                    if top in BROKER_LIBRARIES and not _under_broker(module):
                        yield f"{where}:{node.lineno}: imports {top}: only brokers/<name>/ may"
                if (
                    isinstance(node, ast.ImportFrom)
                    and tops[0] in DECOMPRESSORS
                    and module.name != DECODER
                    and any(alias.name in DECOMPRESSING for alias in node.names)
                ):
                    yield f"{where}:{node.lineno}: imports a decompressor outside {DECODER}.py"
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in DECOMPRESSORS
                and node.attr in DECOMPRESSING
                and module.name != DECODER
            ):
                yield f"{where}:{node.lineno}: {ast.unparse(node)} outside {DECODER}.py"
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in NOT_PRIVATE
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and not _under_broker(module)
                and not CELERY_HOOKS & set(module.parts[:1])
            ):
                yield (
                    f"{where}:{node.lineno}: reaches into {ast.unparse(node)}: "
                    "another object's private, kept in brokers/<name>/"
                )
            elif _tests_transport(node) and module.parts[:1] != ["brokers"]:
                yield (
                    f"{where}:{getattr(node, 'lineno', 0)}: tests the transport "
                    f"({ast.unparse(node)}): ask the broker object"
                )
        for target, names, line, type_only in _own_imports(module, package, known):
            mine, theirs = _command(module.name), _command(target)
            if theirs and mine != theirs and module.name not in ENTRY:
                who = f"the command {mine}" if mine else f"the shared module {module.name}"
                yield f"{where}:{line}: {who} imports the command {theirs}"
            target_folder = known[target].folder if target in known else target.rpartition(".")[0]
            for name in names:
                if (
                    name.startswith("_")
                    and not name.startswith("__")
                    and target_folder != module.folder
                ):
                    yield (
                        f"{where}:{line}: imports {name} from {target or package}, "
                        "private to another folder"
                    )
            if target in known and target != module.name and not type_only:
                edges[module.name].add(target)
    for cycle in _cycles(edges):
        yield f"{package}: import cycle {' -> '.join([*cycle, cycle[0]])}"


def _cycles(edges: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    for component in components:
        yield _path_through(sorted(component), edges)


def _path_through(component: list[str], edges: Mapping[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, for the message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges[node] & members):
            if nxt == start:
                return paths[node]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component


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
        *layout(PACKAGE / "celery_vitals"),
    ]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
