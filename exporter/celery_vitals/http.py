"""HTTP: /metrics, /healthz, /readyz and a landing page, on a threaded WSGI server.

/metrics serves the Prometheus text format or OpenMetrics, as the Accept
header asks (prometheus_client's negotiation), gzipped when the scraper
accepts it. The body comes from the pipeline's Exposition (cached series
text, see exposition.py); a scrape reads the collectors' plain data and never
waits on the broker.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder, gzip_accepted

from celery_vitals import __version__

if TYPE_CHECKING:
    from celery_vitals.exposition import Exposition
    from celery_vitals.webconfig import WebConfig

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]
LISTEN_BACKLOG = 128
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


def make_app(
    registry: CollectorRegistry,
    ready: Callable[[], bool],
    exposition: Exposition | None = None,
    ready_means: str = "the event stream is connected",
) -> WsgiApp:
    """The exporter's WSGI app; without an exposition /metrics is prometheus_client's own.

    ``ready_means`` says what /readyz 200 stands for, on the landing page and in the 503.
    """
    registry_app = make_wsgi_app(registry)
    metrics = registry_app if exposition is None else _metrics_app(exposition, registry_app)
    landing = (
        "<!doctype html><html><head><title>celery-vitals</title></head><body>"
        f"<h1>celery-vitals {html.escape(__version__)}</h1><ul>"
        "<li><a href='metrics'>metrics</a></li>"
        "<li><a href='healthz'>healthz</a> (process alive)</li>"
        f"<li><a href='readyz'>readyz</a> (200 once {html.escape(ready_means)})</li>"
        "</ul></body></html>"
    ).encode()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            if ready():
                return _text(start_response, "200 OK", b"ready\n")
            return _text(
                start_response,
                "503 Service Unavailable",
                f"not ready: 200 once {ready_means}\n".encode(),
            )
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        return _text(start_response, "404 Not Found", b"not found\n")

    return app


def _metrics_app(exposition: Exposition, registry_app: WsgiApp) -> WsgiApp:
    """GET and HEAD /metrics from the exposition (``?name[]=`` filters too); other methods
    (OPTIONS): the registry's app."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return registry_app(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        names = set(query["name[]"]) if "name[]" in query else None
        _, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        body = exposition.render(
            openmetrics=content_type.startswith("application/openmetrics-text"), names=names
        )
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            # level 1: a 22 MB body in ~28 ms instead of ~350 ms at level 9; 34% larger
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [b"" if method == "HEAD" else body]

    return app


def _text(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


class HttpServer:
    """Serves the app on a daemon thread; ``port`` is the bound one (useful with port 0).

    With a web config, the app is behind its basic auth and connections are
    TLS when it has ``tls_server_config``.
    """

    def __init__(
        self, app: WsgiApp, host: str, port: int, web_config: WebConfig | None = None
    ) -> None:
        family = _address_family(host, port)
        context: ssl.SSLContext | None = None
        if web_config is not None:
            from celery_vitals.webconfig import protect

            app = protect(app, web_config.users)
            context = web_config.tls.context() if web_config.tls else None

        class Server(ThreadingWSGIServer):
            address_family = family
            # the accept queue: socketserver's default of 5 sent concurrent scrapes into
            # TCP SYN retries (1, 3, 7 s); the kernel caps it at net.core.somaxconn
            request_queue_size = LISTEN_BACKLOG

            def get_request(self) -> tuple[socket.socket, Any]:
                conn, address = super().get_request()
                if context is None:
                    return conn, address
                return context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                ), address

            def handle_error(self, request: Any, client_address: Any) -> None:
                """A failed handshake or a dropped client is a debug line, not a traceback."""
                log.debug("HTTP connection from %s failed", client_address, exc_info=True)

        self._server = make_server(host, port, app, Server, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def close_socket(self) -> None:
        """Closes the listening socket only: for a forked child that inherited it and has
        no serving thread (shutdown() would wait for that thread forever)."""
        self._server.server_close()


def _address_family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
