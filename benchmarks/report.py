"""What every benchmark does with its result: a plain-text table, and JSON on disk."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def table(rows: Sequence[Sequence[object]]) -> str:
    """Rows as aligned columns: the first column left-aligned, a rule under the header."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def publish(
    result: dict[str, Any],
    output: Path | None,
    print_report: Callable[[dict[str, Any]], None],
    *,
    quiet: bool,
) -> None:
    """Prints the report unless quiet, and writes the JSON unless output is None."""
    if not quiet:
        print_report(result)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        if not quiet:
            print(f"\nwrote {output}")
