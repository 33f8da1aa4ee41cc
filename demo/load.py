"""Steady demo traffic with failures, retries, time limits and an unregistered task.

Bounded: it stops after --duration seconds (default one hour).
"""

from __future__ import annotations

import argparse
import random
import time

from demo.app import DEAD_LETTER, add, app, fail, flaky, hopeless, poison, slow

# (weight, what to send): mostly healthy traffic, with each incident in it
MIX = [
    (70, lambda: add.delay(random.randint(0, 99), random.randint(0, 99))),
    (10, lambda: fail.delay("card declined")),
    (8, lambda: flaky.delay(random.randint(1, 2))),
    (4, hopeless.delay),
    (5, lambda: slow.delay(random.choice([0.2, 0.5, 2.0]))),
    (3, lambda: app.send_task("demo.renamed_in_last_deploy")),
]
if DEAD_LETTER:  # RabbitMQ with the dead-letter route (see demo/app.py)
    MIX.append((2, poison.delay))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=10.0, help="tasks per second")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds to run")
    args = parser.parse_args()
    weights = [weight for weight, _ in MIX]
    senders = [send for _, send in MIX]
    end = time.monotonic() + args.duration
    sent = 0
    while time.monotonic() < end:
        random.choices(senders, weights)[0]()
        sent += 1
        time.sleep(1.0 / args.rate)
    print(f"load: sent {sent} tasks in {args.duration:.0f}s")


if __name__ == "__main__":
    main()
