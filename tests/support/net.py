"""Loopback ports, polling with deadlines and a tiny HTTP client: demo/stack/net.py.

The demo (scripts/demo.sh) runs the same servers as the tests, so the code lives
in demo/stack; tests import it from here as from the rest of tests.support.
"""

from demo.stack.net import LOOPBACK, Response, free_port, http_get, port_open, wait_until

__all__ = ["LOOPBACK", "Response", "free_port", "http_get", "port_open", "wait_until"]
