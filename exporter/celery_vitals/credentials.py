"""Credentials: where they are found (URLs, options), how they are shown (masked), and how
they are sent (an HTTP Basic-auth header). The one mask of every secret is ``***``."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

#: What every secret becomes in logs, errors and command output.
MASK = "***"

_URL_PASSWORD = re.compile(r"(?<=://)([^:/@;]*):([^;]*)@")


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every (non-empty) secret replaced by MASK."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def safe_url(url: str) -> str:
    """A URL as it may be shown: password replaced by MASK.

    A regex rather than a URL parser, so that a malformed URL is masked too.
    Handles failover lists (``url1;url2``).
    """
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", url)


def url_passwords(url: str) -> list[str]:
    """Every password in a URL (failover lists too), as written and percent-decoded."""
    found = [match.group(2) for match in _URL_PASSWORD.finditer(url) if match.group(2)]
    return sorted({*found, *(unquote(secret) for secret in found)})


def url_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) written in an http(s) URL, percent-decoded; None when it has none."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def basic_auth(username: str, password: str) -> str:
    """The value of an ``Authorization`` header with these credentials."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"
