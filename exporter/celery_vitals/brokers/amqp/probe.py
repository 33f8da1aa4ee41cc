"""RabbitMQ queue probe: passive declares over AMQP (declare.py), or one listing of the
vhost's queues from the management HTTP API (management.py, which also says what
RabbitMQ counts and how dead-letter routes are read) with AMQP for what the API cannot
tell yet."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kombu import Connection

from celery_vitals.brokers.amqp.declare import PassiveDeclare
from celery_vitals.brokers.amqp.management import (
    NODE_COLUMNS,
    ManagementClient,
    ManagementError,
    dead_letter_targets,
    error_text,
    has_stats,
    int_or_none,
    memory_facts,
    queue_stats,
)
from celery_vitals.brokers.probe import Deadline, ProbeResult, QueueStats, is_plumbing
from celery_vitals.logs import RateLimitedLogger

log = logging.getLogger(__name__)

TRANSPORT = "amqp"
RESTART_TOLERANCE = 5.0  # seconds a node's boot time may wobble (request latency)
# Share of a call's budget the management API may use: a hanging API must leave
# time for the passive-declare fallback, or every poll would fail.
MANAGEMENT_SHARE = 2 / 3


# -- the probe -------------------------------------------------------------------------------


class AmqpProbe:
    """QueueProbe for RabbitMQ (see the module docstring for what each mode can tell).

    Keeps one AMQP connection between polls; any failure on it drops it, so the
    next call reconnects. Every call is bounded by ``timeout`` in total.
    """

    def __init__(
        self,
        broker_url: str,
        transport_options: Mapping[str, Any],
        timeout: float = 5.0,
        management_url: str | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.timeout = timeout
        options = dict(transport_options)
        for name in ("read_timeout", "write_timeout"):  # SO_RCVTIMEO / SO_SNDTIMEO
            given = options.get(name)
            options[name] = min(given, timeout) if isinstance(given, int | float) else timeout
        self.transport_options = options
        self._rate_limited = RateLimitedLogger(log)
        self._connection: Any = None
        self._declare_passive: PassiveDeclare | None = None
        self._server_version = ""
        self._last_targets: frozenset[str] = frozenset()
        self._node_boot: dict[str, float] = {}  # node -> monotonic time it started
        # queue -> (node, its boot) when its counter was last reported: a counter is
        # only comparable with the previous one within the same epoch
        self._queue_epoch: dict[str, tuple[str, float | None]] = {}
        self.management: ManagementClient | None = None
        if management_url:
            parsed = Connection(broker_url)  # parses only; no network
            password = parsed.password
            self.management = ManagementClient(
                management_url,
                vhost=parsed.virtual_host or "/",
                username=parsed.userid or "guest",
                password=password if isinstance(password, str) else "guest",
            )

    # -- QueueProbe ------------------------------------------------------------------

    def discover(self) -> set[str]:
        """Task queues of the vhost (management only: AMQP cannot list queues)."""
        if self.management is None:
            return set()
        listing = self.management.queues(Deadline(self.timeout), columns=("name",))
        return {
            queue["name"]
            for queue in listing
            if isinstance(queue["name"], str) and not is_plumbing(queue["name"])
        }

    def poll(self, queues: Iterable[str]) -> ProbeResult:
        names = [name for name in dict.fromkeys(queues) if name]
        deadline = Deadline(self.timeout)
        if self.management is not None:
            try:
                return self._poll_management(
                    self.management, names, deadline, Deadline(self.timeout * MANAGEMENT_SHARE)
                )
            except ManagementError as error:
                self._rate_limited.warn_every(
                    "amqp-management",
                    "RabbitMQ management API failed (%s): polling queues "
                    "with passive declares instead (no unacked counts)",
                    error,
                )
        stats = self._passive(names, deadline)
        return ProbeResult(
            queues=tuple(stats[name] for name in names if name in stats),
            dead_letter_targets=self._last_targets,
            info=self._info(""),
        )

    def close(self) -> None:
        connection, self._connection, self._declare_passive = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection: nothing left to do
                connection.collect()

    # -- management ------------------------------------------------------------------

    def _poll_management(
        self,
        api: ManagementClient,
        names: Sequence[str],
        deadline: Deadline,
        api_deadline: Deadline,
    ) -> ProbeResult:
        listing = api.queues(api_deadline)
        nodes = api.get(f"api/nodes?columns={','.join(NODE_COLUMNS)}", api_deadline)
        overview = api.get("api/overview?columns=rabbitmq_version", api_deadline)
        targets = dead_letter_targets(listing, lambda name: api.exchange(name, api_deadline))
        self._note_node_boots(nodes)
        by_name = {queue["name"]: queue for queue in listing}
        previous, self._queue_epoch = self._queue_epoch, {}
        found: dict[str, QueueStats] = {}
        without_stats = []
        for name in names:
            queue = by_name.get(name)
            if queue is None:
                found[name] = QueueStats(name, exists=False)
                continue
            if not has_stats(queue):
                without_stats.append(name)
                if name in previous:
                    self._queue_epoch[name] = previous[name]
                continue
            node = str(queue.get("node", ""))
            epoch = (node, self._node_boot.get(node))
            self._queue_epoch[name] = epoch
            found[name] = queue_stats(
                queue,
                dead_letter_target=name in targets,
                counter_valid=previous.get(name, epoch) == epoch,
            )
        if without_stats:  # declared seconds ago: AMQP knows already
            passive = self._passive(without_stats, deadline)
            found.update(
                {name: passive.get(name, QueueStats(name, exists=True)) for name in without_stats}
            )
        self._last_targets = targets
        version = overview.get("rabbitmq_version") if isinstance(overview, dict) else None
        return ProbeResult(
            queues=tuple(found[name] for name in names if name in found),
            dead_letter_targets=targets,
            facts=memory_facts(nodes),
            info=self._info(version if isinstance(version, str) else ""),
        )

    def _note_node_boots(self, nodes: Any) -> None:
        """When each node started (moves only when it restarts): the epoch of its counters."""
        now = time.monotonic()
        for node in nodes if isinstance(nodes, list) else []:
            if not isinstance(node, dict) or int_or_none(node.get("uptime")) is None:
                continue
            name, booted = str(node.get("name")), now - node["uptime"] / 1000
            previous = self._node_boot.get(name)
            if previous is None or booted > previous + RESTART_TOLERANCE:
                self._node_boot[name] = booted

    def _info(self, version: str) -> dict[str, str]:
        return {
            "transport": TRANSPORT,
            "version": version or self._server_version,
            "eviction_policy": "",
        }

    # -- AMQP --------------------------------------------------------------------------

    def _passive(self, names: Sequence[str], deadline: Deadline) -> dict[str, QueueStats]:
        """Passive declares on the kept connection; a stale one gets one fresh retry."""
        if not names:
            return {}
        reused = self._connection is not None
        try:
            return self._declare_all(names, deadline)
        except Exception:
            self._drop()
            if not reused:
                raise
        return self._declare_all(names, deadline)  # the broker may just have dropped us

    def _declare_all(self, names: Sequence[str], deadline: Deadline) -> dict[str, QueueStats]:
        try:
            connection = self._connect(deadline)
            found: dict[str, QueueStats] = {}
            for name in names:
                stats = self._declare(connection, name, deadline)
                if stats is not None:
                    found[name] = stats
            return found
        except Exception:
            self._drop()
            raise

    def _connect(self, deadline: Deadline) -> Any:
        if self._connection is None:
            connection = Connection(
                self.broker_url,
                transport_options=self.transport_options,
                connect_timeout=deadline.left(),
            )
            try:
                connection.ensure_connection(max_retries=0)  # retrying is the poller's job
            except Exception:
                connection.collect()
                connection.maybe_switch_next()  # not shared; a failover list is honoured
                raise
            self._connection = connection
            properties = getattr(connection.connection, "server_properties", None) or {}
            version = properties.get("version", b"")
            self._server_version = (
                version.decode(errors="replace") if isinstance(version, bytes) else str(version)
            )
        return self._connection

    def _declare(self, connection: Any, name: str, deadline: Deadline) -> QueueStats | None:
        """One queue (None: the broker refused to tell, logged)."""
        _bound_socket_waits(connection, deadline.left())
        if self._declare_passive is None:
            self._declare_passive = PassiveDeclare(connection)
        declared = self._declare_passive(name)
        if declared.refused:
            self._rate_limited.warn_every(
                f"amqp-declare-{getattr(declared.error, 'reply_code', '')}",
                "passive declare of queue %r refused (%s): not reported",
                name,
                declared.error,
            )
            return None
        return QueueStats(
            name, exists=declared.exists, ready=declared.ready, consumers=declared.consumers
        )

    def _drop(self) -> None:
        """Forget the connection without talking to a broker that may be gone."""
        connection, self._connection, self._declare_passive = self._connection, None, None
        if connection is not None:
            try:
                connection.collect()
            except Exception as error:  # already half torn down
                log.debug("dropping the AMQP connection: %s", error_text(error))


def _bound_socket_waits(connection: Any, seconds: float) -> None:
    """Makes the next socket waits end at the call's deadline (py-amqp's TCP socket)."""
    transport = getattr(connection.connection, "transport", None)
    sock = getattr(transport, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)
