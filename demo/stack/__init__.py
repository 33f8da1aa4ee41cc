"""The real servers the demo and the tests run: redis-server, Prometheus, Alertmanager.

Each on a free loopback port, in its own process session, stopped by pid.
"""
