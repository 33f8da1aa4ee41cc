"""scripts/check_links.py: every link of README.md and docs/ resolves, on this repository
and on a planted tree whose broken links it must name, each on its own line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_links.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_link_of_the_readme_and_the_docs_resolves() -> None:
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("none broken\n")


def test_a_broken_file_link_and_a_broken_anchor_are_reported(tmp_path: Path) -> None:
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "alertmanager.yml").write_text("route: {}\n")
    (tmp_path / "README.md").write_text(
        "# Project\n"
        "\n"
        "See [the guide](docs/guide/setup.md#install-it) and\n"
        "[its options](docs/guide/setup.md#options-1).\n"
        "![logo](docs/logo.png) and [Alertmanager](deploy/alertmanager.yml).\n"
        "[upstream](https://github.com/celery/celery) and [here](#project).\n"
        "\n"
        "```sh\n"
        "[not a link](missing.md)\n"
        "```\n"
        "`[not a link either](missing.md)`\n",
        encoding="utf-8",
    )
    (tmp_path / "docs" / "logo.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / "guide" / "setup.md").write_text(
        "# Setup\n"
        "\n"
        "## Install it\n"
        "\n"
        "## Options\n"
        "\n"
        "## Options\n"
        "\n"
        "## TLS and basic auth (`--web-config-file`)\n"
        "\n"
        "Back to the [README](../../README.md#project), the\n"
        "[TLS section](#tls-and-basic-auth---web-config-file), the [options](#options-1).\n"
        "A [broken file link](../install.md) and a [broken anchor](#no-such-heading).\n"
        "And [a third options](#options-2), [bad URL](https:///path 'no host').\n",
        encoding="utf-8",
    )
    result = run(str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "docs/guide/setup.md:13: ../install.md: no such file",
        "docs/guide/setup.md:13: #no-such-heading: no heading #no-such-heading in this page",
        "docs/guide/setup.md:14: #options-2: no heading #options-2 in this page",
        "docs/guide/setup.md:14: https:///path: malformed URL",
    ]
    assert result.stderr == "4 broken of 13 links\n"


def test_a_link_to_a_missing_heading_of_another_page_names_that_page(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nSee [b](b.md#gone).\n", encoding="utf-8")
    (tmp_path / "docs" / "b.md").write_text("# B\n\n## Here\n", encoding="utf-8")
    result = run(str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == "docs/a.md:3: b.md#gone: no heading #gone in b.md\n"
