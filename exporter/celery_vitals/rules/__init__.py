"""Alert rules and Grafana dashboards, built from a user's overrides.

promql      the PromQL vocabulary both builders share, and the selector scoping
config      the overrides file (selector, thresholds, for, disabled alerts, ...)
alerts      the Prometheus rule file
dashboards  the Grafana dashboards
command     the `celery-vitals rules` and `celery-vitals dashboards` commands
"""
