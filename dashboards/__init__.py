"""celery-vitals Grafana dashboards: built by ``build.py``, committed as JSON beside it."""
