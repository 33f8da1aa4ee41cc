"""The SQS queue and message attributes celery-vitals reads, named once (AWS' names)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Visible messages, waiting for a consumer ("ready").
READY = "ApproximateNumberOfMessages"
#: Received and not deleted yet: in flight until the visibility timeout ("unacked").
IN_FLIGHT = "ApproximateNumberOfMessagesNotVisible"
#: Sent with a delay that is not over yet.
DELAYED = "ApproximateNumberOfMessagesDelayed"
#: The queue's own visibility timeout, in seconds.
VISIBILITY_TIMEOUT = "VisibilityTimeout"
#: JSON: the dead-letter queue's ARN and maxReceiveCount.
REDRIVE_POLICY = "RedrivePolicy"
#: What the probe asks of every queue, in one GetQueueAttributes call.
PROBED = (READY, IN_FLIGHT, DELAYED, VISIBILITY_TIMEOUT, REDRIVE_POLICY)
#: Message system attribute: the ARN of the queue a dead-lettered message came from.
DEAD_LETTER_SOURCE = "DeadLetterQueueSourceArn"


def count(attributes: Mapping[str, Any], name: str) -> int | None:
    """A numeric attribute (SQS answers strings); None when absent or not a number."""
    try:
        return int(attributes[name])
    except (KeyError, TypeError, ValueError):
        return None
