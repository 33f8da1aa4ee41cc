"""A package missing from the install is reported as an installation problem, naming the
package and the pip command that installs it, at every place that reports broker errors:
the event stream, the queue poller, the enable_events broadcast, the doctor and `dlq`.

The ImportError is the real one: kombu's Redis transport is imported afresh (its module
and kombu's transport cache dropped) while ``packaging`` cannot be imported, which is
what a clean install of kombu without its ``redis`` extra looks like (issue 21).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from celery_vitals import dlq, doctor, installation, poller, stream
from celery_vitals.brokers.redis.probe import RedisProbe
from celery_vitals.config import Config, build
from celery_vitals.control import celery_app
from celery_vitals.exporter import EventsEnabler, WorkerBroadcasts
from celery_vitals.labels import LabelGuard
from celery_vitals.logs import RateLimitedLogger
from stack.net import wait_until

BROKER = "redis://:s3cret@127.0.0.1:1/0"  # nothing listens: the import fails first
DETAIL = (
    "installation problem: Python package 'packaging' is missing "
    "(needed by kombu's Redis transport)"
)
FIX = "pip install --upgrade 'celery-vitals' (or: pip install 'packaging')"
LINE = f"{DETAIL}: {FIX}"


@pytest.fixture
def without_packaging(monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """kombu's Redis transport is imported again on the next connection, and ``packaging``
    cannot be imported; the config of a Redis broker."""
    import kombu.transport

    monkeypatch.setattr(kombu.transport, "_transport_cache", {})
    for name in list(sys.modules):
        if name == "kombu.transport.redis" or name.startswith("packaging."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "packaging", None)
    yield build({"broker_url": BROKER})


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def redis_import_error(config: Config) -> BaseException:
    probe = RedisProbe(config.broker_url, config.broker_transport_options, timeout=0.5)
    with pytest.raises(ImportError) as raised:
        probe.poll(["celery"])
    return raised.value


# -- the message ---------------------------------------------------------------------------


def test_the_redis_transport_without_packaging_names_package_transport_and_fix(
    without_packaging: Config,
) -> None:
    error = redis_import_error(without_packaging)
    assert installation.problem(error) == installation.Problem(DETAIL, FIX)
    assert installation.explain(error) == LINE


def test_an_import_error_behind_another_error_is_found(without_packaging: Config) -> None:
    try:
        try:
            RedisProbe(BROKER, {}, timeout=0.5).poll(["celery"])
        except ImportError as error:
            raise RuntimeError("transport failed") from error
    except RuntimeError as wrapped:
        assert installation.explain(wrapped) == LINE


def test_a_package_of_an_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_vitals.brokers.sqs.probe import SqsSettings

    monkeypatch.setitem(sys.modules, "boto3", None)  # an install without the sqs extra
    with pytest.raises(ImportError) as raised:
        SqsSettings(region="us-east-1").client(timeout=1.0)
    assert installation.problem(raised.value) == installation.Problem(
        "installation problem: Python package 'boto3' is missing (needed by "
        "celery_vitals.brokers.sqs.probe); celery-vitals installs it with its 'sqs' extra",
        "pip install 'celery-vitals[sqs]'",
    )


def test_a_name_an_installed_package_lacks_is_a_version_mismatch() -> None:
    try:
        from kombu.utils import no_such_name  # type: ignore[attr-defined]  # noqa: F401
    except ImportError as error:
        found = installation.problem(error)
    assert found is not None
    assert found.detail.startswith(
        "installation problem: ImportError: cannot import name 'no_such_name' from 'kombu.utils' ("
    )
    assert found.detail.endswith(f"(needed by {__name__})")
    assert found.fix == (
        "pip install --upgrade --force-reinstall 'celery-vitals' (its dependencies' "
        "versions do not go together)"
    )


def test_other_errors_are_described_as_before() -> None:
    error = ConnectionRefusedError(111, "Connection refused")
    assert installation.problem(error) is None
    assert installation.explain(error) == "ConnectionRefusedError: [Errno 111] Connection refused"


# -- each place that reports broker errors -------------------------------------------------


def test_event_stream(
    without_packaging: Config, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "rate_limited", RateLimitedLogger(stream.log))  # not rate-limited
    events = stream.EventStream(
        celery_app(without_packaging),
        lambda _body: None,
        lambda: None,
        lambda _reason: None,
        queue_ttl=5,
        queue_expires=60,
    )
    thread = threading.Thread(target=events.run, daemon=True)
    with caplog.at_level(logging.WARNING):
        thread.start()
        try:
            wait_until(
                lambda: messages(caplog, "celery_vitals.stream"),
                timeout=10,
                what="the event stream's first failure",
            )
        finally:
            events.stop()
            thread.join(timeout=10)
    assert messages(caplog, "celery_vitals.stream")[0] == (
        f"event stream unavailable ({LINE}); retrying every 3s at most"
    )
    assert not events.connected.is_set()


def test_queue_poller_probe_discovery_and_worker_broadcasts(
    without_packaging: Config, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        poller, "rate_limited", RateLimitedLogger(logging.getLogger(poller.__name__))
    )
    config = without_packaging
    app = celery_app(config)
    asks = WorkerBroadcasts(app, None, timeout=0.5)

    def stats() -> None:  # what asking new workers does first: a connection
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0)

    polls = poller.QueuePoller(
        RedisProbe(config.broker_url, config.broker_transport_options, timeout=0.5),
        queues=("celery",),
        dlqs=(),
        interval=15,
        discovery_interval=300,
        queue_names=LabelGuard("queue_name", 10, 100),
        worker_queues=asks.queues,
        worker_stats=stats,
    )
    with caplog.at_level(logging.WARNING):
        polls.poll_once()
    app.close()
    assert messages(caplog, "celery_vitals.poller") == [
        f"queue discovery failed ({LINE})",
        f"asking workers for their queues failed ({LINE})",
        f"asking workers for their stats failed ({LINE})",
        f"queue poll failed ({LINE})",
    ]
    assert (polls.up, polls.errors) == (False, {"ModuleNotFoundError": 2})


def test_enable_events_broadcast(
    without_packaging: Config, caplog: pytest.LogCaptureFixture
) -> None:
    enabler = EventsEnabler(celery_app(without_packaging), interval=60)
    thread = threading.Thread(target=enabler.run, daemon=True)
    with caplog.at_level(logging.WARNING):
        thread.start()
        try:
            wait_until(lambda: enabler.results["error"], timeout=10, what="the first broadcast")
        finally:
            enabler.stop()
            thread.join(timeout=10)
    assert enabler.results == {"ok": 0, "error": 1}
    assert messages(caplog, "celery_vitals.exporter") == [
        f"enable_events broadcast failed ({LINE})"
    ]


def test_doctor_says_installation_problem_not_network(without_packaging: Config) -> None:
    seen = doctor.look(without_packaging, timeout=0.5, listen=1, exporter_url=None)
    findings = doctor.diagnose(seen)
    assert findings == [doctor.Finding("broker", "fail", DETAIL, FIX)]
    assert doctor.text(findings) == f"FAIL  broker                {DETAIL}. Fix: {FIX}."
    assert doctor.exit_code(findings) == 1


def test_dlq_says_installation_problem_not_network(without_packaging: Config) -> None:
    with pytest.raises(dlq.DlqError) as raised:
        dlq.connect(without_packaging)
    assert str(raised.value) == LINE
