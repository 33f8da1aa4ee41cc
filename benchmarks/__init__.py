"""Benchmarks for celery-vitals (not tests: they do not run in CI; see docs/benchmarks.md)."""
