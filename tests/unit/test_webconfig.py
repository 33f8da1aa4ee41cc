"""--web-config-file: TLS and bcrypt basic auth, with a CA and certificate made here."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from celery_vitals.http import HttpServer, make_app
from celery_vitals.webconfig import BasicAuth, load
from stack.net import free_port, wait_until

PASSWORD = "s3cret-scrape"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a server certificate it signed for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("celery-vitals test CA"))
        .issuer_name(_name("celery-vitals test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, d / "server.key")
    return d


@pytest.fixture(scope="module")
def web_config(certs: Path) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = certs / "web.yml"
    # relative paths resolve from the file's directory, as in exporter-toolkit
    path.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"  min_version: TLS12\nbasic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    return path


@pytest.fixture(scope="module")
def server(web_config: Path) -> Iterator[int]:
    registry = CollectorRegistry()
    Counter("webconfig_probe", "a metric to scrape", registry=registry).inc()
    http = HttpServer(
        make_app(registry, ready=lambda: True), "127.0.0.1", 0, web_config=load(web_config)
    )
    http.start()
    yield http.port
    http.stop()


def _get(
    url: str, certs: Path, user: str | None = None, password: str = PASSWORD
) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def test_scrape_over_tls_needs_the_password(server: int, certs: Path) -> None:
    url = f"https://127.0.0.1:{server}/metrics"
    status, body = _get(url, certs)
    assert status == 401 and "webconfig_probe" not in body
    assert _get(url, certs, "prometheus", "wrong")[0] == 401
    assert _get(url, certs, "nobody")[0] == 401
    status, body = _get(url, certs, "prometheus")
    assert status == 200 and "webconfig_probe_total 1.0" in body
    assert _get(url, certs, "prometheus")[0] == 200  # the cached verification
    assert _get(f"https://localhost:{server}/", certs, "prometheus")[0] == 200


def test_probes_stay_open_for_kubernetes_and_docker(server: int, certs: Path) -> None:
    assert _get(f"https://127.0.0.1:{server}/healthz", certs) == (200, "ok\n")
    assert _get(f"https://127.0.0.1:{server}/readyz", certs)[0] == 200


def test_the_certificate_is_checked_by_the_client(server: int, certs: Path) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"https://127.0.0.1:{server}/healthz", timeout=10)


def test_plain_http_to_the_tls_port_is_refused_and_the_server_lives_on(
    server: int, certs: Path
) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{server}/metrics", timeout=10)
    # a client that connects and says nothing does not block the others
    with socket.create_connection(("127.0.0.1", server), timeout=10):
        assert _get(f"https://127.0.0.1:{server}/healthz", certs)[0] == 200


def test_basic_auth_rejects_malformed_headers() -> None:
    auth = BasicAuth({"u": bcrypt.hashpw(b"p", bcrypt.gensalt(rounds=4))})
    basic = "Basic " + base64.b64encode(b"u:p").decode()
    assert auth.check(basic) and auth.check(basic)
    for header in (
        None,
        "",
        "Bearer x",
        "Basic !!!",
        "Basic " + base64.b64encode(b"up").decode(),
        "Basic " + base64.b64encode(b"u:P").decode(),
    ):
        assert not auth.check(header)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basic_auth_users:\n  u: plaintext\n", "basic_auth_users.u: expected a bcrypt hash"),
        ("basic_auth_users:\n  u: '$2b$10$short'\n", "basic_auth_users.u: not a valid bcrypt hash"),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "cannot load cert_file",
        ),
        ("tls_server_config:\n  key_file: x.key\n", "cert_file is required"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n",
            "min_version: expected one of",
        ),
        ("tls_config: {}\n", "unsupported key(s) tls_config"),
        ("basic_auth_users: [a, b]\n", "basic_auth_users: expected a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_files_are_named_reasons(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match="^" + str(path)) as caught:
        load(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_vitals", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_malformed_web_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  prometheus: hunter2\n")
    result = _run("serve", "--broker-url", "redis://127.0.0.1:1/0", "--web-config-file", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("celery-vitals: error: --web-config-file: ")
    assert "hunter2" not in result.stderr
    env = {**os.environ, "CELERY_VITALS_WEB_CONFIG_FILE": str(tmp_path / "absent.yml")}
    result = _run("serve", "--broker-url", "redis://127.0.0.1:1/0", env=env)
    # the value came from the variable: the error names it
    assert result.returncode == 2 and "CELERY_VITALS_WEB_CONFIG_FILE: cannot read" in result.stderr


def test_serve_uses_the_web_config(web_config: Path, certs: Path) -> None:
    """The option reaches the server: the real command, configured by its variable."""
    port = free_port()
    env = {
        **os.environ,
        "CELERY_VITALS_WEB_CONFIG_FILE": str(web_config),
        "CELERY_VITALS_BROKER_URL": "redis://127.0.0.1:1/0",
        "CELERY_VITALS_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "CELERY_VITALS_QUEUE_POLL_INTERVAL": "0",
        "CELERY_VITALS_ENABLE_EVENTS": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery_vitals", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def healthz() -> int:
            assert process.poll() is None, "the exporter exited"
            return _get(f"https://127.0.0.1:{port}/healthz", certs)[0]

        status = wait_until(
            healthz,
            timeout=30,
            what="the exporter to answer /healthz",
            interval=0.1,
            ignore=(urllib.error.URLError,),
        )
        assert status == 200
        assert _get(f"https://127.0.0.1:{port}/metrics", certs)[0] == 401
        status, body = _get(f"https://127.0.0.1:{port}/metrics", certs, "prometheus")
        assert status == 200 and "celery_vitals_build_info" in body
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"serving on https://127.0.0.1:{port}/metrics (basic auth)" in stderr
