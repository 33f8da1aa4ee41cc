"""Harness: owns everything one test (or one module) starts, and stops it in reverse order."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from pathlib import Path

from celery import Celery

from stack.net import free_port, wait_until
from stack.redis import RedisServer
from stack.workers import CeleryWorker
from tests.support import events
from tests.support.metrics import Scrape
from tests.support.processes import AgentWorker, ExporterProcess

WORKER_START_TIMEOUT = 45.0


class Harness:
    """Brokers, exporters, workers and Celery clients, stopped by pid at close()."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops everything (workers before the broker they talk to); idempotent."""
        self._stack.close()

    def redis(self, name: str = "redis") -> RedisServer:
        """A fresh redis-server per test: ~50 ms, and nothing shared with other tests.

        (Sharing one server with a DB per test would isolate the event stream
        too: kombu's default fanout_prefix puts the DB number in the pub/sub
        channel name, "/0.celeryev/...". A test that kills its broker needs its
        own server anyway.)
        """
        server = RedisServer(self.directory / name)
        self._stack.callback(server.stop)
        return server.start()

    def exporter(
        self, broker_url: str, *args: str, name: str = "exporter", wait_ready: bool = True
    ) -> ExporterProcess:
        exporter = ExporterProcess(broker_url, self.directory, *args, name=name)
        self._stack.callback(exporter.stop)
        return exporter.start(wait_ready=wait_ready)

    def worker(
        self,
        name: str,
        broker_url: str,
        *,
        exporter: ExporterProcess | None,
        task_events: bool = True,
        app: str = "demo.app",
        queues: str | None = None,
        extra_env: dict[str, str] | None = None,
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
    ) -> CeleryWorker:
        """A worker, started and ready: its worker-online seen by ``exporter``, or a ping reply.

        Waiting on the exporter (not on a sleep) also proves the exporter
        receives the worker's events before the test sends any task.
        """
        worker = CeleryWorker(
            name,
            broker_url,
            self.directory,
            app=app,
            task_events=task_events,
            queues=queues,
            extra_env=extra_env,
            concurrency=concurrency,
            extra_args=extra_args,
        )
        self._stack.callback(worker.stop)
        worker.start()
        if exporter is not None:

            def online(scrape: Scrape) -> bool:
                worker.assert_running()  # a crashed worker fails now, with its log
                return scrape.get("celery_worker_up", hostname=worker.hostname) == 1

            exporter.wait_for(
                online,
                timeout=WORKER_START_TIMEOUT,
                what=f'celery_worker_up{{hostname="{worker.hostname}"}} 1',
            )
        else:
            self.wait_answering(worker, broker_url)
        return worker

    def wait_answering(self, worker: CeleryWorker, broker_url: str) -> None:
        """Until the worker answers a ping: it consumes (remote control included)."""
        client = self.client(broker_url)

        def answered() -> bool:
            worker.assert_running()
            return bool(client.control.ping(destination=[worker.hostname], timeout=0.5))

        wait_until(
            answered,
            timeout=WORKER_START_TIMEOUT,
            what=f"{worker.hostname} to answer a ping",
            details=worker.tail,
        )

    def agent_worker(
        self,
        name: str,
        broker_url: str,
        *,
        port: int | None = None,
        wait_listening: bool = True,
        **kwargs: object,
    ) -> AgentWorker:
        """A worker of the agent app (no -E), started; by default, until its agent answers."""
        worker = AgentWorker(name, broker_url, self.directory, port=port or free_port(), **kwargs)
        self._stack.callback(worker.stop)
        worker.start()
        if wait_listening:

            def listening() -> bool:
                worker.assert_running()
                return worker.listening()

            wait_until(
                listening,
                timeout=WORKER_START_TIMEOUT,
                what=f"the agent of {worker.hostname} on port {worker.port}",
                details=worker.tail,
            )
        return worker

    def client(self, broker_url: str) -> Celery:
        """A Celery client that sends task-sent events, as the demo app does."""
        app = Celery(f"client-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
        app.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=True)
        self._stack.callback(app.close)
        return app

    @staticmethod
    def sync_events(exporter: ExporterProcess, broker_url: str, timeout: float = 20.0) -> str:
        """Returns once ``exporter`` demonstrably consumes the event exchange.

        /readyz turns 200 when the consumer is set up, a moment before kombu's
        redis transport sends SUBSCRIBE on the first poll; an event published
        in between would be lost. A fake worker's heartbeat, published until
        it shows up, closes that window. Returns the fake worker's hostname.
        """
        hostname = f"sync-{uuid.uuid4().hex[:8]}@test"

        def seen() -> bool:
            events.publish(broker_url, [events.heartbeat(hostname)])
            return exporter.scrape().get("celery_worker_up", hostname=hostname) == 1

        wait_until(
            seen,
            timeout=timeout,
            what=f"{exporter.name} to see {hostname}",
            details=exporter.tail,
            interval=0.2,
        )
        return hostname
