"""A real Prometheus for end-to-end tests: demo/stack/prometheus.py (the demo runs it too)."""

from demo.stack.prometheus import Labels, PrometheusServer, Sample, prometheus_executable

__all__ = ["Labels", "PrometheusServer", "Sample", "prometheus_executable"]
