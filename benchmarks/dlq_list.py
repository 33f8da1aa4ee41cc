"""How long ``celery-vitals dlq list`` takes, and how much memory, on a large DLQ.

A real redis-server (or RabbitMQ node, ``--broker amqp``) is filled with N real
Celery task messages (one made by ``send_task``, copied with fresh ids and
five task names), then ``celery-vitals dlq list QUEUE --json`` runs as a
subprocess; its wall time and peak RSS (``wait4`` rusage) are reported. The
sample is bounded (10,000 by default), so time and memory must not grow with N.

    python benchmarks/dlq_list.py                       # Redis: 2,000, 20,000, 200,000
    python benchmarks/dlq_list.py --broker amqp --sizes 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402
from kombu import Connection  # noqa: E402

from stack.rabbitmq import RabbitMQServer  # noqa: E402
from stack.redis import RedisServer  # noqa: E402

TASKS = ("billing.charge", "mail.send", "report.build", "sync.pull", "image.resize")
CLI = str(Path(sys.executable).parent / "celery-vitals")


def fill_redis(url: str, queue: str, count: int) -> None:
    import redis

    app = Celery("bench", broker=url, set_as_current=False)
    app.send_task("template", args=(1, 2), kwargs={"user": 42}, queue="template")
    client = redis.Redis.from_url(url)
    template = json.loads(client.rpop("template") or b"{}")
    client.delete(queue)
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        template["headers"]["id"] = str(uuid.uuid4())
        template["headers"]["task"] = TASKS[n % len(TASKS)]
        template["headers"]["x-dead-lettered-at"] = time.time() - n
        pipe.lpush(queue, json.dumps(template))
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    assert client.llen(queue) == count


def fill_amqp(url: str, queue: str, count: int) -> None:
    import amqp

    with Connection(url) as connection:
        connection.ensure_connection()
        channel = connection.connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True, auto_delete=False)
        body = json.dumps([[1, 2], {"user": 42}, {}]).encode()
        for n in range(count):
            channel.basic_publish(
                amqp.Message(
                    body,
                    content_type="application/json",
                    content_encoding="utf-8",
                    application_headers={
                        "id": str(uuid.uuid4()),
                        "task": TASKS[n % len(TASKS)],
                        "lang": "py",
                        "retries": 0,
                    },
                ),
                exchange="",
                routing_key=queue,
            )
        channel.queue_declare(queue, passive=True)  # a round trip: all published


def measure(url: str, queue: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_VITALS_")}
    env["CELERY_VITALS_BROKER_URL"] = url
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            [CLI, "dlq", "list", queue, "--json"], env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(err.read().decode())
        peak = usage.ru_maxrss
        text = out.read()
    [summary] = json.loads(text)
    return {
        "depth": summary["depth"],
        "sample_size": summary["sample_size"],
        "sampled": summary["sampled"],
        "seconds": round(elapsed, 2),
        "peak_rss_kib": peak,
        "tasks": summary["tasks"],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("redis", "amqp"), default="redis")
    parser.add_argument("--sizes", default="2000,20000,200000")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as directory:
        if args.broker == "redis":
            server: Any = RedisServer(Path(directory)).start()
            url = server.url()
        else:
            server = RabbitMQServer(Path(directory))
            server.start()
            url = server.url
        try:
            for size in sizes:
                queue = f"dead_letter_{size}"
                started = time.perf_counter()
                (fill_redis if args.broker == "redis" else fill_amqp)(url, queue, size)
                filled = time.perf_counter() - started
                result = {
                    "broker": args.broker,
                    "fill_seconds": round(filled, 1),
                    **measure(url, queue),
                }
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            server.stop()
    return results


if __name__ == "__main__":
    main()
