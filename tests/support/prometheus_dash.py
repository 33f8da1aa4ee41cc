"""A minimal real Prometheus (Debian's binary) for the dashboard tests.

Started on a free loopback port with its own config and storage directory;
either scraping nothing (to check that queries parse) or scraping exporters
every second. Stopped by pid.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.net import LOOPBACK, free_port, http_get, wait_until
from tests.support.processes import ManagedProcess


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (host:port) every ``scrape_interval``."""

    def __init__(self, directory: Path, targets: Sequence[str] = (), *,
                 job: str = "celery-vitals", scrape_interval: str = "1s") -> None:
        self.directory = directory
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.port = 0
        self.process: ManagedProcess | None = None
        executable = shutil.which("prometheus")
        if executable is None:
            raise FileNotFoundError("prometheus not found (apt-get install prometheus)")
        self.executable = executable

    def _config(self) -> str:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [],
        }
        if self.targets:
            config["scrape_configs"].append({
                "job_name": self.job, "static_configs": [{"targets": self.targets}]})
        return json.dumps(config)  # JSON is YAML

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Starts on a free port (another one if it was taken) and waits for /-/ready."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(self._config())
        for _ in range(5):
            self.port = free_port()
            self.process = ManagedProcess(
                f"prometheus :{self.port}",
                [self.executable, f"--config.file={config}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                self.directory / "prometheus.log")
            self.process.spawn()
            process = self.process
            wait_until(lambda: self.ready() or not process.running, timeout=timeout,
                       what=f"prometheus ready on port {self.port}", details=process.tail)
            if process.running:
                return self
            process.stop()
        raise AssertionError(f"prometheus did not start\n{self.tail()}")

    def ready(self) -> bool:
        try:
            return http_get(self.port, "/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """The JSON answer of an instant query, errors included (status "error")."""
        params = {"query": expr, "time": f"{time.time() if at is None else at:.3f}"}
        response = http_get(self.port, "/api/v1/query?" + urllib.parse.urlencode(params),
                            timeout=10)
        answer: dict[str, Any] = json.loads(response.body)
        return answer

    def tail(self) -> str:
        return self.process.tail() if self.process is not None else "(prometheus never ran)"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
