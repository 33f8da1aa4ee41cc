"""The demo: a Celery app that fails, retries and times out on purpose (app.py), a timeline
of incidents (timeline.py), and the real servers it runs (stack/); the tests use them too."""
