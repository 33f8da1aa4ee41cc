"""A Celery app that fails, retries and times out on purpose; the demo and the tests use it."""
