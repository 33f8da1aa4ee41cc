"""A publisher of its own for the publish-stamp tests, as a web server or a script is.

    python -m tests.support.stamp_publisher agent|plain '[[queue, task, args, countdown], ...]'

``agent`` imports tests/support/agent_app.py, which runs celery_vitals.agent.install(app):
each task it publishes carries its publication stamp. ``plain`` is a Celery app of the
same broker without the agent: unstamped. The broker is CELERY_BROKER_URL. Prints, as
one JSON list, the time.time() read just before each publish: the test's own measure.
"""

from __future__ import annotations

import json
import os
import sys
import time

from celery import Celery


def app_for(kind: str) -> Celery:
    if kind == "agent":
        from tests.support.agent_app import app

        return app
    plain = Celery("plain", broker=os.environ["CELERY_BROKER_URL"])
    plain.conf.broker_connection_retry_on_startup = True
    return plain


def main(kind: str, tasks: str) -> None:
    app = app_for(kind)
    published = []
    with app.producer_or_acquire() as producer:  # connected before the first measure
        producer.connection.ensure_connection(max_retries=3)
        for queue, name, args, countdown in json.loads(tasks):
            published.append(time.time())
            app.send_task(name, args, queue=queue, countdown=countdown, producer=producer)
    print(json.dumps(published), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
