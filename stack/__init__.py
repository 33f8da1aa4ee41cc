"""Launchers of the real parts the demo, the tests and the benchmarks run.

redis-server (redis.py), a RabbitMQ node (rabbitmq.py), moto's SQS server (moto.py),
Prometheus (prometheus.py), Alertmanager and a webhook receiver (alertmanager.py) and
Celery workers (workers.py): each on a free loopback port (net.py), in its own process
session, ready once a poll with a deadline says so (net.wait_until), stopped by pid
(processes.py), never by name.
"""
