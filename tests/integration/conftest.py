"""Integration tests use the shared fixtures of tests/conftest.py (harness, process logs)."""
