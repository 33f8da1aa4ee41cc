"""The Dockerfile's ENTRYPOINT and HEALTHCHECK, run outside a container (no engine here).

The commands are read from the Dockerfile itself, so a change there is tested.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from stack.net import free_port, wait_until
from tests.support.deploy import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
BIN = Path(sys.executable).parent


def _exec_form(instruction: str) -> list[str]:
    """The JSON argument list of an instruction (continuation lines joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    match = re.search(rf"^{instruction}\b.*?(\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"no exec-form {instruction} in the Dockerfile"
    command: list[str] = json.loads(match.group(1))
    return command


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    command = _exec_form("HEALTHCHECK")
    assert command[:2] == ["python", "-c"]
    env = {**os.environ, "CELERY_VITALS_LISTEN_ADDRESS": f"0.0.0.0:{port}"}
    return subprocess.run(
        [sys.executable, *command[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_image_shape() -> None:
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users and all(user.split(":")[0] not in ("root", "0") for user in users)
    assert re.search(r"^EXPOSE 9808$", DOCKERFILE, re.MULTILINE)
    assert re.search(r'pip install "\.\$\{EXTRAS:\+\[\$EXTRAS\]\}"', DOCKERFILE)  # and EXTRAS
    assert DOCKERFILE.rstrip().splitlines()[-1].startswith("ENTRYPOINT")  # default target


def test_entrypoint_serves_and_the_healthcheck_passes() -> None:
    entrypoint = _exec_form("ENTRYPOINT")
    assert entrypoint == ["celery-vitals", "serve"]
    port = free_port()
    env = {
        **os.environ,
        "CELERY_VITALS_BROKER_URL": "redis://127.0.0.1:1/0",
        "CELERY_VITALS_LISTEN_ADDRESS": f"0.0.0.0:{port}",
        "CELERY_VITALS_QUEUE_POLL_INTERVAL": "0",
        "CELERY_VITALS_ENABLE_EVENTS": "false",
    }
    process = subprocess.Popen(
        [str(BIN / entrypoint[0]), *entrypoint[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def listening() -> bool:
            assert process.poll() is None, "the exporter exited"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return True

        wait_until(
            listening, timeout=30, what="the exporter to listen", interval=0.1, ignore=(OSError,)
        )
        result = _healthcheck(port)
        assert result.returncode == 0, result.stderr
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode in (0, -15)


def test_healthcheck_fails_when_nothing_listens() -> None:
    result = _healthcheck(free_port())
    assert result.returncode != 0
    assert "Connection refused" in result.stderr


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    for needed in ("pyproject.toml", "README.md", "exporter/", "demo/"):
        assert f"!{needed}" in lines
