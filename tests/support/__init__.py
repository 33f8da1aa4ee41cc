"""Test support: what only the tests need, on top of stack/'s launchers.

The Harness that owns what one test starts (harness.py), the exporter and agent workers
as scraped processes (processes.py), /metrics as data (metrics.py), the Celery apps the
test workers run (*_app.py), the unit tests' pipeline (pipeline.py), the rule files and
dashboards as data (rules.py, dashboards.py, expressions.py), fake events and messages
(events.py, messages.py) and the external tools (tools.py). Servers, ports, waits and
process handling live in stack/, shared with the demo and the benchmarks.
"""
