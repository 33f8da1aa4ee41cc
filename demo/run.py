"""The demo (``bash scripts/demo.sh``, i.e. ``python -m demo``): everything on free loopback
ports, in a temporary directory, stopped by pid on Ctrl-C or on error.

redis-server (AOF on) -> a demo worker with the celery-vitals agent -> the
exporter (queues and the broker) -> Prometheus with the demo's rules
(demo/rules.py) -> Alertmanager with deploy/alertmanager.yml's routing, whose
webhooks point at the receiver printing pages and tickets here
(demo/receiver.py); the load follows the timeline of incidents
(demo/timeline.py). DEMO_QUIET=1: Redis, a worker with task events, the
steady mixed load (demo/load.py) and the exporter only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from demo import rules, timeline
from demo.console import say
from stack.alertmanager import AlertmanagerServer
from stack.net import LOOPBACK, free_port, http_get, wait_until
from stack.processes import REPO_ROOT, ManagedProcess, venv_executable
from stack.prometheus import PrometheusServer
from stack.redis import RedisServer

JOB = "celery-vitals"  # exporter and agents under one job: the rules join them by job
INTERVAL = "5s"  # scrape and rule evaluation (the compose stack: 15s)
QUEUE_POLL_SECONDS = "5"
ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager.yml"
#: Alertmanager timings shortened for the demo (deploy/alertmanager.yml: 30s and 5m).
GROUPING = {"group_wait": "5s", "group_interval": "15s"}
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Settings:
    quiet: bool
    incidents: list[timeline.Incident] | None  # None: the full timeline
    minute_seconds: float
    rate: float
    listen_address: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The DEMO_* variables; ValueError saying what is wrong and what is valid."""
        quiet = env.get("DEMO_QUIET", "")
        if quiet not in ("", "0", "1"):
            raise ValueError(f"DEMO_QUIET={quiet!r}: use 1 (just the exporter) or 0")
        names = env.get("DEMO_INCIDENTS", "").strip()
        return cls(
            quiet == "1",
            timeline.parse_incidents(names) if names else None,
            _positive(env, "DEMO_MINUTE_SECONDS", 60.0),
            _positive(env, "DEMO_RATE", 10.0),
            env.get("CELERY_VITALS_LISTEN_ADDRESS") or None,
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: a number above 0 (default {default:g})")
    return value


class Demo:
    """Owns every process it starts (stopped by pid, in reverse order, at close())."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings, self.directory = settings, directory
        self.stack = contextlib.ExitStack()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CELERY_VITALS_", "CELERY_BROKER"))
        }
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )

    def process(self, name: str, argv: list[str], env: Mapping[str, str]) -> ManagedProcess:
        process = ManagedProcess(
            name, argv, self.directory / f"{name}.log", env={**self.env, **env}, cwd=REPO_ROOT
        )
        self.stack.callback(process.stop)
        process.spawn()
        return process

    def redis(self) -> str:
        server = RedisServer(self.directory / "redis", persistent=True)
        self.stack.callback(server.stop)
        return server.start().url()

    def worker(self, broker_url: str) -> int | None:
        """The demo worker: with the agent (its port returned), or with task events (quiet)."""
        argv = [
            venv_executable("celery"),
            "-A",
            "demo.app",
            "worker",
            "-c",
            "2",
            "-n",
            "demo@%h",
            "--loglevel=warning",
        ]
        env = {"CELERY_BROKER_URL": broker_url}
        if self.settings.quiet:
            self.process("worker", [*argv, "-E"], env)
            return None
        port = free_port()
        worker = self.process(
            "worker",
            argv,
            {**env, "DEMO_AGENT": "1", "CELERY_VITALS_AGENT_LISTEN_ADDRESS": f"{LOOPBACK}:{port}"},
        )
        _wait_http(worker, port, "/healthz", "the worker's agent")
        return port

    def exporter(self, broker_url: str) -> int:
        listen = self.settings.listen_address or f"{LOOPBACK}:{free_port()}"
        args = ["--listen-address", listen]
        if not self.settings.quiet:  # the agent owns task and worker metrics
            args += [
                "--no-event-stream",
                "--queue",
                "celery",
                "--queue",
                timeline.REPORTS_QUEUE,
                "--queue-poll-interval",
                QUEUE_POLL_SECONDS,
            ]
        exporter = self.process(
            "exporter",
            [venv_executable("celery-vitals"), "serve", *args],
            {"CELERY_VITALS_BROKER_URL": broker_url},
        )
        port = int(listen.rsplit(":", 1)[1])
        _wait_http(exporter, port, "/readyz", "the exporter")
        return port

    def alerting(self, targets: list[str]) -> tuple[PrometheusServer, AlertmanagerServer]:
        """Receiver, Alertmanager and Prometheus with the demo's rules."""
        from demo import receiver

        server = receiver.serve(LOOPBACK, 0)
        self.stack.callback(server.shutdown)
        rules_path = self.directory / "rules.yml"
        rules.generate(rules_path)
        config = self.directory / "alertmanager.yml"
        config.write_text(
            alertmanager_config(f"http://{LOOPBACK}:{server.server_port}"), encoding="utf-8"
        )
        manager = AlertmanagerServer(self.directory / "alertmanager", config)
        self.stack.callback(manager.stop)
        manager.start()
        prometheus = PrometheusServer(
            self.directory / "prometheus",
            {JOB: targets},
            [rules_path],
            interval=INTERVAL,
            alertmanager=f"{LOOPBACK}:{manager.port}",
        )
        self.stack.callback(prometheus.stop)
        prometheus.start()
        return prometheus, manager

    def close(self) -> None:
        self.stack.close()


def _wait_http(process: ManagedProcess, port: int, path: str, what: str) -> None:
    def answers() -> bool:
        process.assert_running()
        try:
            return http_get(port, path, timeout=1).status == 200
        except OSError:
            return False

    wait_until(
        answers,
        timeout=START_TIMEOUT,
        what=f"{what} on port {port}{path}",
        details=process.tail,
        interval=0.2,
    )


def alertmanager_config(receiver_url: str) -> str:
    """deploy/alertmanager.yml with every webhook sent to the receiver, grouping shortened."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    config["route"].update(GROUPING)
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{receiver_url}/{receiver['name']}"
    return json.dumps(config, indent=1) + "\n"


def run(settings: Settings, directory: Path) -> None:
    demo = Demo(settings, directory)
    try:
        say(f"demo: starting (logs in {directory})")
        broker_url = demo.redis()
        say(f"demo: broker  {broker_url}")
        agent_port = demo.worker(broker_url)
        if agent_port is not None:
            say(f"demo: worker's agent  http://{LOOPBACK}:{agent_port}/metrics")
        exporter_port = demo.exporter(broker_url)
        say(f"demo: exporter  http://{LOOPBACK}:{exporter_port}/metrics")
        if settings.quiet:
            demo.process(
                "load",
                [sys.executable, "-m", "demo.load", "--rate", f"{settings.rate:g}"],
                {"CELERY_BROKER_URL": broker_url},
            )
            say("demo: worker and load running (DEMO_QUIET=1)  (Ctrl-C to stop)")
            signal.pause()
            return
        prometheus, manager = demo.alerting(
            [f"{LOOPBACK}:{exporter_port}", f"{LOOPBACK}:{agent_port}"]
        )
        _announce(prometheus, manager)
        _follow_timeline(settings, broker_url)
    finally:
        say("demo: stopping")
        demo.close()


def _announce(prometheus: PrometheusServer, manager: AlertmanagerServer) -> None:
    say(
        f"demo: Prometheus alerts  {prometheus.url}/alerts\n"
        f"demo: Alertmanager  {manager.url}/#/alerts\n"
        "demo: Grafana dashboards: docker compose up (docs/deploy.md), http://localhost:3000\n"
        "demo: rules shortened for the demo, so that alerts fire and resolve within minutes "
        "(demo/rules-overrides.yml):\n"
        + "\n".join(f"  {line}" for line in rules.shortened())
        + f"\ndemo: Prometheus scrapes and evaluates every {INTERVAL}; Alertmanager groups "
        f"after {GROUPING['group_wait']}, updates every {GROUPING['group_interval']}\n"
        "demo: pages (critical) and tickets (warning) print here as they arrive"
    )


def _follow_timeline(settings: Settings, broker_url: str) -> None:
    from demo.app import app

    app.conf.broker_url = broker_url
    full = settings.incidents is None
    incidents = list(timeline.INCIDENTS.values()) if full else settings.incidents or []
    slots = timeline.schedule(incidents, warm_up=full)
    say("demo: " + "\n".join(timeline.describe(slots, settings.minute_seconds)))
    timeline.Load(app, settings.rate, settings.minute_seconds).run(slots)


def _stop_on_sigterm(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Ctrl-C, also when started in the background (where a shell ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    directory = Path(tempfile.mkdtemp(prefix="celery-vitals-demo."))
    try:
        run(settings, directory)
    except KeyboardInterrupt:
        shutil.rmtree(directory, ignore_errors=True)
        return 130
    except Exception as error:  # a server that did not start, a broker that went away
        print(f"demo: failed: {error}\n(logs kept in {directory})", file=sys.stderr)
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0
