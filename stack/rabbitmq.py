"""A private RabbitMQ node from Debian's package, on free loopback ports, stopped by pid.

It runs without systemd and without the /usr/sbin wrappers that switch user: own
HOME, Erlang cookie, epmd, ports and data directories; it takes a few seconds.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from stack.net import LOOPBACK, free_port, port_open, wait_until
from stack.processes import ManagedProcess, executable

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitMQServer:
    """A private RabbitMQ node (with the management plugin) for one test session.

    Nothing is shared with a system broker: HOME (so the Erlang cookie is
    ours), node name, epmd (our own, on a free port), AMQP, distribution,
    CLI-distribution and management ports, data, logs and pid file all live
    in ``directory``.
    """

    def __init__(self, directory: Path, *, management: bool = True) -> None:
        self.directory = directory
        self.management = management
        self.node = f"vitals-{uuid.uuid4().hex[:8]}@localhost"
        self.port = 0
        self.management_port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.epmd: ManagedProcess | None = None
        self.server: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}//"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.management_port}/"

    def api(self, method: str, path: str, body: object = None) -> object:
        """One call to the management API as guest; the decoded JSON answer (None if empty)."""
        request = urllib.request.Request(
            self.management_url + "api/" + path.lstrip("/"),
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "content-type": "application/json",
                "authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def vhost(self, name: str) -> str:
        """A new virtual host (guest may use it): its broker URL."""
        self.api("PUT", f"vhosts/{name}")
        self.api(
            "PUT", f"permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
        )
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/{name}"

    @property
    def pid_file(self) -> Path:
        return self.directory / "rabbit.pid"

    def _env(self) -> dict[str, str]:
        d = self.directory
        ctl_min = free_port(below=65500)
        env = dict(os.environ)
        env.update(
            {
                "HOME": str(d),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": LOOPBACK,
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_min),
                "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_min + 10),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            }
        )
        for name in ("RABBITMQ_LOGS", "RABBITMQ_BASE", "RABBITMQ_USE_LONGNAME"):
            env.pop(name, None)
        return env

    def _write_config(self) -> None:
        d = self.directory
        lines = ["log.console = false", "log.file.level = info"]
        if self.management:
            lines += [
                f"management.tcp.port = {self.management_port}",
                f"management.tcp.ip = {LOOPBACK}",
            ]
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (d / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf

    def _run(self, *argv: str, timeout: float) -> None:
        result = subprocess.run(
            list(argv),
            env=self._env(),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )

    def start(self, timeout: float = 60.0) -> RabbitMQServer:
        """epmd, plugins (offline), server; ready when ``rabbitmqctl wait`` says so."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return self
            except AssertionError:
                self.stop(timeout=15)
                if attempt == 2:
                    raise
                # most likely a port taken between choosing and binding: new ports
                self.directory = self.directory.with_name(f"{self.directory.name}-{attempt + 1}")
        return self

    def _start_once(self, timeout: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "log").mkdir(exist_ok=True)
        self.port, self.dist_port = free_port(), free_port()
        self.management_port, self.epmd_port = free_port(), free_port()
        self._write_config()

        self.epmd = ManagedProcess(
            "epmd",
            [executable("epmd"), "-port", str(self.epmd_port), "-address", LOOPBACK],
            self.directory / "epmd.log",
        )
        self.epmd.spawn()
        wait_until(
            lambda: port_open(self.epmd_port) or not self.epmd_running(),
            timeout=10,
            what="epmd to listen",
            details=self.epmd.tail,
        )
        self.epmd.assert_running()

        if self.management:
            self._run(
                executable("rabbitmq-plugins", RABBITMQ_BIN / "rabbitmq-plugins"),
                "--offline",
                "enable",
                "rabbitmq_management",
                timeout=60,
            )
        self._start_node(timeout)

    def kill(self) -> None:
        """The node dies at once (SIGKILL to its process group); epmd stays."""
        if self.server is not None:
            self.server.kill()
        self.pid_file.unlink(missing_ok=True)

    def restart(self, timeout: float = 60.0) -> RabbitMQServer:
        """The node again, on the same ports, so clients find it where it was."""
        if self.server is not None and self.server.running:
            self.server.stop(timeout)
        self.pid_file.unlink(missing_ok=True)
        self._start_node(timeout)
        return self

    def _start_node(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.server = ManagedProcess(
            f"rabbitmq-server {self.node}",
            [executable("rabbitmq-server", RABBITMQ_BIN / "rabbitmq-server")],
            self.directory / "server.log",
            env=self._env(),
            cwd=self.directory,
        )
        self.server.spawn()
        server = self.server
        wait_until(
            lambda: self.pid_file.exists() or not server.running,
            timeout=max(deadline - time.monotonic(), 1),
            what="the rabbitmq pid file",
            details=self.tail,
        )
        server.assert_running()
        self._run(
            executable("rabbitmqctl", RABBITMQ_BIN / "rabbitmqctl"),
            "wait",
            str(self.pid_file),
            "--timeout",
            str(int(max(deadline - time.monotonic(), 5))),
            timeout=max(deadline - time.monotonic(), 5) + 5,
        )
        wait_until(
            lambda: port_open(self.port), timeout=10, what="the AMQP listener", details=self.tail
        )

    def epmd_running(self) -> bool:
        return self.epmd is not None and self.epmd.running

    def tail(self) -> str:
        parts = [process.tail() for process in (self.epmd, self.server) if process is not None]
        log = self.directory / "log" / f"{self.node}.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- last lines of {log}:\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the Erlang VM (pid file), then the wrapper's group; then our epmd."""
        if self.server is not None:
            # the wrapper script traps SIGTERM and stops the node with rabbitmqctl
            self.server.stop(timeout)
        if self.epmd is not None:
            self.epmd.stop(5)

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
