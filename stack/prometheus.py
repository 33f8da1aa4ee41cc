"""A real Prometheus (Debian's ``prometheus`` binary) for the end-to-end tests and the demo.

It scrapes the given targets and evaluates the given rule files every
``interval`` (a second in the tests), sends firing alerts to an Alertmanager
if given one, keeps its TSDB in the given directory, listens on a free
loopback port and is stopped by pid. ``query`` runs an instant query through
the HTTP API and returns the vector as plain data.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.net import LOOPBACK, free_port, http_get, wait_until
from stack.processes import ManagedProcess, executable

Labels = frozenset[tuple[str, str]]


def prometheus_executable() -> str:
    return executable("prometheus")


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels (``__name__`` included if kept) and value."""

    labels: dict[str, str]
    value: float

    @property
    def label_set(self) -> Labels:
        """The labels without ``__name__``: what an alert built on this sample carries."""
        return frozenset((k, v) for k, v in self.labels.items() if k != "__name__")


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (job name -> ["host:port", ...]) and loading rules."""

    def __init__(
        self,
        directory: Path,
        targets: Mapping[str, Sequence[str]],
        rule_files: Sequence[Path] = (),
        *,
        interval: str = "1s",
        alertmanager: str | None = None,
    ) -> None:
        self.directory = directory
        self.targets = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.interval = interval
        self.alertmanager = alertmanager  # "host:port" that firing alerts are sent to
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    def config(self) -> str:
        """prometheus.yml as JSON (a subset of YAML): no YAML writer needed."""
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.interval,
                "evaluation_interval": self.interval,
                "scrape_timeout": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in self.targets.items()
            ],
        }
        if self.alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]
            }
        return json.dumps(config, indent=2)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Starts on a free port (a new one if it was taken meanwhile); ready on /-/ready."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config(), encoding="utf-8")
        for _ in range(5):
            self.port = free_port()
            process = ManagedProcess(
                f"prometheus :{self.port}",
                [
                    prometheus_executable(),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--log.level=warn",
                ],
                self.directory / "prometheus.log",
                cwd=self.directory,
            )
            self.process = process
            process.spawn()
            if self._wait_ready(process, timeout):
                return self
            if "address already in use" not in process.output(latest_start_only=True):
                process.assert_running()  # failed for another reason: show why
        raise AssertionError(f"prometheus could not find a free port\n{self.tail()}")

    def _wait_ready(self, process: ManagedProcess, timeout: float) -> bool:
        """True once ready, False if the process exited (e.g. the port was taken)."""
        wait_until(
            lambda: self.ready() or not process.running,
            timeout=timeout,
            what=f"prometheus /-/ready on port {self.port}",
            details=process.tail,
        )
        return process.running

    def ready(self) -> bool:
        try:
            return http_get(self.port, "/-/ready", timeout=1).status == 200
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def tail(self) -> str:
        return self.process.tail() if self.process is not None else "(prometheus never ran)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- HTTP API ------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer, AssertionError otherwise."""
        query = urllib.parse.urlencode(params)
        response = http_get(self.port, f"/api/v1/{path}?{query}", timeout=10)
        body = json.loads(response.body)
        assert response.status == 200 and body.get("status") == "success", (
            f"/api/v1/{path} {params} answered {response.status}: {response.text}"
        )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query; the result must be a vector (as every rule expression is)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", f"{expr} gave a {data['resultType']}"
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """A range query: each series' labels and its (timestamp, value) points."""
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )
        assert data["resultType"] == "matrix", f"{expr} gave a {data['resultType']}"
        return [
            (dict(item["metric"]), [(float(t), float(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def label_sets(self, expr: str) -> set[Labels]:
        """The label sets an instant query returns."""
        return {sample.label_set for sample in self.query(expr)}

    def wait_for(
        self, expr: str, expected: set[Labels], *, timeout: float, what: str
    ) -> list[Sample]:
        """Queries until exactly ``expected`` label sets come back; shows the last answer."""
        last: list[list[Sample]] = [[]]

        def matches() -> bool:
            last[0] = self.query(expr)
            return {sample.label_set for sample in last[0]} == expected

        def details() -> str:
            shown = "\n".join(f"  {sorted(s.labels.items())} {s.value}" for s in last[0])
            return f"expected {sorted(map(sorted, expected))}\nlast answer:\n{shown}\n{self.tail()}"

        wait_until(matches, timeout=timeout, what=what, details=details, interval=0.25)
        return last[0]

    def wait_nonempty(self, expr: str, *, timeout: float, what: str) -> list[Sample]:
        """Queries until the answer is not empty (a comparison that holds)."""
        last: list[list[Sample]] = [[]]

        def answered() -> bool:
            last[0] = self.query(expr)
            return bool(last[0])

        wait_until(answered, timeout=timeout, what=what, details=self.tail, interval=0.25)
        return last[0]

    def scraped(self, job: str) -> bool:
        """Whether every target of ``job`` has been scraped successfully."""
        samples = self.query(f'up{{job="{job}"}}')
        return len(samples) == len(self.targets[job]) and all(s.value == 1 for s in samples)

    def wait_scraped(self, job: str, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.scraped(job),
            timeout=timeout,
            what=f"{job} scraped (up 1)",
            details=self.tail,
            interval=0.25,
        )

    def rule_health(self) -> dict[str, str]:
        """Every loaded rule's name (record or alert) -> its health after its last evaluation."""
        groups = self.api("rules")["groups"]
        return {
            f"{group['name']}/{rule['name']}": rule["health"]
            for group in groups
            for rule in group["rules"]
        }

    def wait_rules_evaluated(self, timeout: float = 20.0) -> dict[str, str]:
        """Waits until every rule was evaluated at least once (health no longer unknown)."""
        result: dict[str, str] = {}

        def evaluated() -> bool:
            result.clear()
            result.update(self.rule_health())
            return bool(result) and "unknown" not in result.values()

        wait_until(
            evaluated,
            timeout=timeout,
            what="every rule evaluated once",
            details=lambda: json.dumps(result, indent=1),
            interval=0.25,
        )
        return result
