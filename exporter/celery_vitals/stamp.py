"""The publication stamp: what ``celery_vitals.agent.install(app)`` adds to every task a
process publishes, so that the agent setup knows how long tasks wait without task events.

The stamp is a message header holding the publication time (Unix seconds, a float); on
RabbitMQ the AMQP ``timestamp`` property carries the same time in whole seconds, which
the management API reports as a queue's ``head_message_timestamp``. The agent in a
worker reads it (queue wait); the exporter's probes read it at the head of each queue
(the oldest waiting message's age), without consuming anything.
"""

from __future__ import annotations

#: The message header of the publication time (Unix seconds).
HEADER = "celery_vitals_published"
