"""Checks the links of README.md and docs/**/*.md, without the network.

    python scripts/check_links.py          # this repository
    python scripts/check_links.py ROOT     # another tree (the tests plant broken links in one)

Every relative Markdown link and image must name a file or folder that exists, and
every ``#anchor`` (in the same page or ``file.md#anchor``) a heading of its target,
slugged as GitHub does (lowercase; punctuation other than ``-`` and ``_`` removed;
spaces become ``-``; the second heading of one slug gets ``-1``, the third ``-2``).
External ``http(s)://`` links are only checked for syntax. Links in code (fenced
blocks, inline code spans) are not links. Exit 1 with one line per broken link,
``file:line: link: why``; exit 0 saying how many links were checked otherwise.
Standard library only.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be <bracketed> and have a "title"
INLINE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
    r"\(\s*(<[^>\n]*>|(?:[^()\s]|\([^()\s]*\))*)"
    r"""(?:\s+(?:"[^"]*"|'[^']*'|\([^()]*\)))?\s*\)"""
)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)")
AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
HTML = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HTML_ID = re.compile(r"""<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    kept = "".join(
        char
        for char in text
        if char in "-_ " or unicodedata.category(char)[0] in "LN" or char.isalnum()
    )
    return kept.replace(" ", "-")


def _lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block) for each line."""
    fence = ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            yield number, line, True
        elif match:
            fence = match.group(1)
            yield number, line, True
        else:
            yield number, line, False


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown page has: its headings' slugs (duplicates numbered) and
    the ids and names of its HTML elements."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    previous = ""
    for _, line, code in _lines(text):
        heading = None
        if not code:
            atx = ATX.match(line)
            if atx:
                heading = atx.group(2) or ""
            elif SETEXT.match(line) and previous.strip() and not previous.lstrip().startswith("|"):
                heading = previous.strip()
            found.update(HTML_ID.findall(line))
        if heading is not None:
            base = slug(heading)
            count = counts.get(base, 0)
            counts[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        previous = "" if code else line
    return found


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of each link and image outside code."""
    for number, line, code in _lines(text):
        if code:
            continue
        bare = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for pattern in (INLINE, REFERENCE, AUTOLINK, HTML):
            for match in pattern.finditer(bare):
                target = match.group(1).strip()
                if target.startswith("<") and target.endswith(">"):
                    target = target[1:-1].strip()
                if target:
                    yield number, target


def _external(target: str) -> str | None:
    """Why an http(s) link is malformed, or None."""
    parts = urlsplit(target)
    if not parts.netloc or parts.netloc.startswith(".") or " " in target:
        return "malformed URL"
    if not re.fullmatch(r"[A-Za-z0-9.-]+|[0-9A-Fa-f:.]+", parts.hostname or ""):
        return "malformed host"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "malformed port"
    return None


class Checker:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._anchors: dict[Path, set[str]] = {}

    def anchors_of(self, path: Path) -> set[str]:
        if path not in self._anchors:
            self._anchors[path] = anchors(path.read_text(encoding="utf-8"))
        return self._anchors[path]

    def problem(self, source: Path, target: str) -> str | None:
        """Why ``target``, linked from ``source``, does not resolve, or None."""
        if target.startswith(("http://", "https://")):
            return _external(target)
        if SCHEME.match(target):  # mailto:, ftp: ... (not checked)
            return None
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if path_part.startswith("/"):
            destination = self.root / path_part.lstrip("/")
        elif path_part:
            destination = source.parent / path_part
        else:
            destination = source
        if not destination.exists():
            return "no such file"
        if not destination.resolve().is_relative_to(self.root):
            return "outside the repository"
        markdown = destination.is_file() and destination.suffix.lower() == ".md"
        if anchor and markdown and unquote(anchor) not in self.anchors_of(destination):
            where = "this page" if destination == source else path_part
            return f"no heading #{anchor} in {where}"
        return None

    def files(self) -> list[Path]:
        readme = self.root / "README.md"
        docs = sorted((self.root / "docs").rglob("*.md"))
        return ([readme] if readme.exists() else []) + docs

    def run(self) -> tuple[int, list[str]]:
        """(links checked, one line per broken link)."""
        checked, broken = 0, []
        for path in self.files():
            for number, target in links(path.read_text(encoding="utf-8")):
                checked += 1
                why = self.problem(path, target)
                if why:
                    broken.append(f"{path.relative_to(self.root)}:{number}: {target}: {why}")
        return checked, broken


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    checked, broken = Checker(root).run()
    for line in broken:
        print(line)
    sys.stdout.flush()
    if broken:
        print(f"{len(broken)} broken of {checked} links", file=sys.stderr)
        return 1
    print(f"{checked} links checked, none broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
