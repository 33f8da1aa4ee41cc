"""TLS and basic auth for the HTTP endpoint, from a ``--web-config-file``.

The file has the format Prometheus exporters share (exporter-toolkit), so one
file and one Prometheus scrape config serve every exporter of a deployment::

    tls_server_config:
      cert_file: server.crt        # relative paths: from the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12           # optional: TLS10, TLS11, TLS12, TLS13
      max_version: TLS13
    basic_auth_users:
      prometheus: $2b$12$...       # bcrypt hash: htpasswd -nbB user pw

Everything is read and checked at start (certificate and key loaded, hashes
parsed), so a bad file stops the exporter with one line, never a scrape.

Basic auth protects every path except ``/healthz`` and ``/readyz``: those
answer only "ok"/"ready" (no metric, no version), and Kubernetes probes and
Docker's HEALTHCHECK cannot carry credentials without putting the password in
the pod spec or the image.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bcrypt
import yaml

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's names; Python's ssl cannot ask for a certificate without
# verifying it, so RequestClientCert and RequireAnyClientCert are refused
# rather than silently made stricter or looser.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
}
_TOP_KEYS = {"tls_server_config", "basic_auth_users"}
# compared against when the user is unknown, so timing does not tell which users exist
_DUMMY_HASH = b"$2b$10$fG1N26MXBu7gTcZ5/q0JBuFKuG5jjX9i30F4jY4WRsxQ3lbBGobxS"


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None

    def context(self) -> ssl.SSLContext:
        """A server context; raises ValueError naming the file that does not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        if self.max_version:
            context.maximum_version = TLS_VERSIONS[self.max_version]
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"tls_server_config: cannot load cert_file {self.cert_file} "
                f"with key_file {self.key_file}: {_reason(error)}"
            ) from None
        context.verify_mode = CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(
                    f"tls_server_config: cannot load client_ca_file "
                    f"{self.client_ca_file}: {_reason(error)}"
                ) from None
        return context


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TlsConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error).lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _mapping(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in keys)
    if unknown:
        raise ValueError(
            f"{where}: unsupported key(s) {', '.join(unknown)}; expected {', '.join(sorted(keys))}"
        )
    return value


def _tls(raw: dict[str, Any], base: Path) -> TlsConfig:
    def path(key: str, required: bool) -> Path | None:
        value = raw.get(key)
        if value in (None, ""):
            if required:
                raise ValueError(f"tls_server_config: {key} is required")
            return None
        if not isinstance(value, str):
            raise ValueError(f"tls_server_config.{key}: expected a file path")
        return base / value

    def choice(key: str, choices: Iterable[str], default: str | None) -> str | None:
        value = raw.get(key, default)
        if value is not None and value not in choices:
            raise ValueError(
                f"tls_server_config.{key}: expected one of {', '.join(choices)}, got {value!r}"
            )
        return value

    cert, key = path("cert_file", True), path("key_file", True)
    assert cert is not None and key is not None  # required above
    client_auth = choice("client_auth_type", CLIENT_AUTH, "NoClientCert") or "NoClientCert"
    client_ca = path("client_ca_file", False)
    if client_auth != "NoClientCert" and client_ca is None:
        raise ValueError(f"tls_server_config: client_auth_type {client_auth} needs client_ca_file")
    tls = TlsConfig(
        cert,
        key,
        client_auth,
        client_ca,
        choice("min_version", TLS_VERSIONS, "TLS12") or "TLS12",
        choice("max_version", TLS_VERSIONS, None),
    )
    tls.context()  # loads the files now: a bad key fails at start
    return tls


def _users(raw: dict[str, Any]) -> Mapping[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ValueError(f"basic_auth_users: invalid user name {user!r}")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(
                f"basic_auth_users.{user}: expected a bcrypt hash ($2b$...), not a plain password"
            )
        try:
            bcrypt.checkpw(b"", hashed.encode())  # parses the hash: a typo fails at start
        except ValueError:
            raise ValueError(f"basic_auth_users.{user}: not a valid bcrypt hash") from None
        users[user] = hashed.encode()
    return MappingProxyType(users)


def load(path: str | Path) -> WebConfig:
    """Read and check a web config file; raises ValueError with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}") from None
    try:
        top = _mapping(data, "web config", _TOP_KEYS)
        tls_raw = _mapping(top.get("tls_server_config"), "tls_server_config", _TLS_KEYS)
        users_raw = top.get("basic_auth_users") or {}
        if not isinstance(users_raw, dict):
            raise ValueError("basic_auth_users: expected a mapping of user: bcrypt hash")
        return WebConfig(path, _tls(tls_raw, path.parent) if tls_raw else None, _users(users_raw))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes.

    bcrypt is deliberately slow (tens of ms per check at cost 10+), and
    Prometheus sends the same credentials every scrape, so a successful check
    is remembered by a SHA-256 of user, hash and password. Failures are not
    cached, and the password itself is never kept.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = users
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_bytes, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_bytes.decode("utf-8", "replace")
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user_bytes, hashed or b"", password))).digest()
        if hashed is not None:
            with self._lock:
                if key in self._verified:  # a digest: the lookup's timing tells nothing
                    return True
        ok = bcrypt.checkpw(password, hashed or _DUMMY_HASH) and hashed is not None
        if ok:
            with self._lock:
                self._verified.add(key)
        return ok


def protect(app: WsgiApp, users: Mapping[str, bytes]) -> WsgiApp:
    """``app`` behind basic auth (all paths but the probes); ``app`` itself without users."""
    if not users:
        return app
    auth = BasicAuth(users)
    body = b"401 Unauthorized\n"

    def guarded(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in OPEN_PATHS or auth.check(
            environ.get("HTTP_AUTHORIZATION")
        ):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", 'Basic realm="celery-vitals", charset="UTF-8"'),
            ],
        )
        return [body]

    return guarded
