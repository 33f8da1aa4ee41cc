"""HTTP: /metrics, /healthz, /readyz and a landing page, on a threaded WSGI server.

/metrics is prometheus_client's WSGI app (it negotiates OpenMetrics from the
Accept header); a scrape reads the collectors' plain data and never waits on
the broker.
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from celery_vitals import __version__

if TYPE_CHECKING:
    from celery_vitals.webconfig import WebConfig

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that stops talking (or never finishes TLS) frees its thread

    def setup(self) -> None:
        """TLS handshake here, on the request's thread, so a slow client cannot block accept."""
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s are not news."""


WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def make_app(registry: CollectorRegistry, ready: Callable[[], bool]) -> WsgiApp:
    metrics = make_wsgi_app(registry)
    landing = (
        "<!doctype html><html><head><title>celery-vitals</title></head><body>"
        f"<h1>celery-vitals {html.escape(__version__)}</h1><ul>"
        "<li><a href='metrics'>metrics</a></li>"
        "<li><a href='healthz'>healthz</a> (process alive)</li>"
        "<li><a href='readyz'>readyz</a> (event stream connected)</li>"
        "</ul></body></html>"
    ).encode()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            if ready():
                return _text(start_response, "200 OK", b"ready\n")
            return _text(start_response, "503 Service Unavailable",
                         b"not ready: event stream not connected\n")
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        return _text(start_response, "404 Not Found", b"not found\n")

    return app


def _text(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


class HttpServer:
    """Serves the app on a daemon thread; ``port`` is the bound one (useful with port 0).

    With a web config, the app is behind its basic auth and connections are
    TLS when it has ``tls_server_config``.
    """

    def __init__(self, app: WsgiApp, host: str, port: int,
                 web_config: WebConfig | None = None) -> None:
        family = _address_family(host, port)
        context: ssl.SSLContext | None = None
        if web_config is not None:
            from celery_vitals.webconfig import protect

            app = protect(app, web_config.users)
            context = web_config.tls.context() if web_config.tls else None

        class Server(ThreadingWSGIServer):
            address_family = family

            def get_request(self) -> tuple[socket.socket, Any]:
                conn, address = super().get_request()
                if context is None:
                    return conn, address
                return context.wrap_socket(conn, server_side=True,
                                           do_handshake_on_connect=False), address

            def handle_error(self, request: Any, client_address: Any) -> None:
                """A failed handshake or a dropped client is a debug line, not a traceback."""
                log.debug("HTTP connection from %s failed", client_address, exc_info=True)

        self._server = make_server(host, port, app, Server, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _address_family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
