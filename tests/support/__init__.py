"""Test support: real brokers, real Celery workers and a real exporter as subprocesses.

Everything here starts processes on free loopback ports in temporary
directories, waits for readiness by polling with a deadline, and stops what
it started by pid (never by name).
"""
