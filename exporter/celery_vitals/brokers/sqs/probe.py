"""Amazon SQS queue probe: one GetQueueAttributes call per queue and poll, with boto3.

SQS tells per queue, approximately (AWS: "eventually consistent", about a
minute behind at worst):

Attribute names: attributes.py.

- ``ApproximateNumberOfMessages``: visible, waiting for a consumer (``ready``);
- ``ApproximateNumberOfMessagesNotVisible``: received and not deleted yet, i.e.
  in flight until the visibility timeout brings them back (``unacked``);
- ``ApproximateNumberOfMessagesDelayed``: sent with a delay not over yet;
- ``VisibilityTimeout`` and ``RedrivePolicy`` (the dead-letter queue, by ARN,
  and ``maxReceiveCount``: receives after which SQS moves a message there).

Names follow kombu's SQS transport: a Celery queue ``q`` is the SQS queue
``entity_name(queue_name_prefix + q)`` (dots become dashes, other punctuation
underscores); ``predefined_queues`` map Celery names to queue URLs (and,
optionally, their own credentials and region). Queues found by ListQueues
(under ``queue_name_prefix``) and dead-letter queues are labelled with their
SQS name less the prefix.

Cost per poll: one GetQueueAttributes per queue and per dead-letter queue;
GetQueueUrl once per queue first seen (cached), ListQueues (1000 a page, at
most ``LIST_PAGES`` pages) per discovery interval. Every call has the probe
timeout and no retries, and a poll stops with TimeoutError once its budget is
spent: bounded, on the poller thread. At most ``max_queues`` queues are polled.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from celery_vitals.brokers.probe import Deadline, ProbeResult, QueueStats, is_plumbing
from celery_vitals.brokers.sqs import attributes
from celery_vitals.logs import RateLimitedLogger

rate_limited = RateLimitedLogger(logging.getLogger(__name__))

TRANSPORT = "sqs"
NOT_FOUND = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
LIST_PAGES = 5
DEFAULT_REGION = "us-east-1"  # kombu's default too

# kombu's SQS names: dots become dashes, punctuation other than - and _ underscores
_NAME_TABLE = {ord(c): "_" for c in string.punctuation if c not in "-_."}
_NAME_TABLE[ord(".")] = "-"


def sqs_name(queue: str, prefix: str = "") -> str:
    """The SQS queue name kombu uses for the Celery queue ``queue``."""
    name = prefix + queue
    if name.endswith(".fifo"):
        return name[:-5].translate(_NAME_TABLE) + ".fifo"
    return name.translate(_NAME_TABLE)


def is_sqs_plumbing(name: str) -> bool:
    """Celery's plumbing queues (events, remote control) under their SQS names too."""
    return is_plumbing(name) or name.startswith("celeryev-") or name.endswith("-pidbox")


def parse_redrive(text: Any) -> tuple[str, str | None, int | None] | None:
    """(DLQ name, its account or None, maxReceiveCount) from a RedrivePolicy attribute."""
    try:
        policy = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    arn = policy.get("deadLetterTargetArn") if isinstance(policy, dict) else None
    if not isinstance(arn, str) or arn.count(":") < 5:
        return None
    parts = arn.split(":", 5)  # arn:aws:sqs:region:account:name
    try:
        receives: int | None = int(policy.get("maxReceiveCount"))  # type: ignore[union-attr]
    except (TypeError, ValueError):
        receives = None
    return parts[5], parts[4] or None, receives


@dataclass(frozen=True)
class SqsSettings:
    """Where and as whom to call SQS, from the broker URL and kombu's transport options.

    ``sqs://KEY:SECRET@`` gives credentials (URL-encoded, as kombu reads them);
    without them boto3's usual chain applies (environment, shared config and
    AWS_PROFILE, the container's or instance's role). A host in the URL is the
    endpoint (http unless ``is_secure``), as for kombu.
    """

    region: str
    endpoint_url: str | None = None
    key_id: str | None = None
    secret: str | None = field(default=None, repr=False)
    prefix: str = ""
    predefined: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    client_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_url(cls, broker_url: str, options: Mapping[str, Any]) -> SqsSettings:
        from kombu import Connection  # parses the URL as the workers' kombu does

        conn = Connection(broker_url.split(";", maxsplit=1)[0])
        endpoint = None
        if conn.hostname:
            scheme = "https" if options.get("is_secure") else "http"
            endpoint = f"{scheme}://{conn.hostname}" + (f":{conn.port}" if conn.port else "")
        predefined = options.get("predefined_queues") or {}
        config = options.get("client-config") or {}
        return cls(
            region=str(options.get("region") or _default_region()),
            endpoint_url=endpoint,
            key_id=conn.userid or None,
            secret=conn.password or None,
            prefix=str(options.get("queue_name_prefix", "")),
            predefined=predefined if isinstance(predefined, Mapping) else {},
            client_config=config if isinstance(config, Mapping) else {},
        )

    def client(self, timeout: float, queue: str | None = None) -> Any:
        """An SQS client (for a predefined queue: with its credentials and region)."""
        import boto3
        from botocore.config import Config

        own = self.predefined.get(queue, {}) if queue is not None else {}
        session = boto3.session.Session(
            region_name=str(own.get("region", self.region)),
            aws_access_key_id=own.get("access_key_id", self.key_id),
            aws_secret_access_key=own.get("secret_access_key", self.secret),
            aws_session_token=own.get("session_token"),
        )
        config = Config(
            **{
                **self.client_config,
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "retries": {"total_max_attempts": 1},
            }
        )
        return session.client("sqs", endpoint_url=self.endpoint_url, config=config)

    def label(self, name: str) -> str:
        """The queue_name of an SQS queue found by name: less the prefix."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name


def _default_region() -> str:
    import boto3

    return boto3.session.Session().region_name or DEFAULT_REGION


def error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code if isinstance(code, str) else None


class SqsProbe:
    """Depth, in-flight and delayed messages per SQS queue; DLQs from redrive policies."""

    def __init__(
        self,
        broker_url: str,
        transport_options: Mapping[str, Any],
        *,
        timeout: float,
        max_queues: int = 100,
    ) -> None:
        self.settings = SqsSettings.from_url(broker_url, transport_options)
        self.timeout = timeout
        self.max_queues = max_queues
        self._clients: dict[str | None, Any] = {}
        self._urls: dict[str, str] = {}  # queue_name -> queue URL

    def _client(self, queue: str | None = None) -> Any:
        key = queue if queue in self.settings.predefined else None
        if key not in self._clients:
            self._clients[key] = self.settings.client(self.timeout, key)
        return self._clients[key]

    # -- QueueProbe ------------------------------------------------------------------

    def discover(self) -> set[str]:
        """The predefined queues, or those ListQueues shows under queue_name_prefix."""
        if self.settings.predefined:
            return {name for name in self.settings.predefined if not is_sqs_plumbing(name)}
        deadline = Deadline(self.timeout * LIST_PAGES)
        found: set[str] = set()
        token: str | None = None
        for _ in range(LIST_PAGES):
            deadline.left()
            page = self._client().list_queues(
                QueueNamePrefix=self.settings.prefix,
                MaxResults=1000,
                **({"NextToken": token} if token else {}),
            )
            for url in page.get("QueueUrls", []):
                name = self.settings.label(urlsplit(url).path.rsplit("/", 1)[-1])
                if not is_sqs_plumbing(name):
                    found.add(name)
                    self._urls.setdefault(name, url)
            token = page.get("NextToken")
            if not token:
                break
        return found

    def poll(self, queues: Iterable[str]) -> ProbeResult:
        deadline = Deadline(self.timeout)
        names = [name for name in dict.fromkeys(queues) if name and not is_sqs_plumbing(name)]
        # Celery names first ("a.b" configured before "a-b" listed): one queue, one label,
        # and the one the agents use
        names.sort(key=lambda name: sqs_name(name) == name)
        if len(names) > self.max_queues:
            rate_limited.warn_every(
                "sqs-cap",
                "%d SQS queues: polling the first %d (--max-queue-names)",
                len(names),
                self.max_queues,
            )
            names = names[: self.max_queues]
        stats: dict[str, QueueStats] = {}
        dead: dict[str, tuple[str, str | None, str]] = {}  # DLQ -> (SQS name, account, source)
        seen_urls: dict[str, str] = {}
        for name in names:
            url = self._url(name, deadline)
            if url is not None and url in seen_urls:  # "a-b" listed, "a.b" polled already
                continue
            queue, target = self._stats(name, url, deadline)
            if url is not None and queue.exists:
                seen_urls[url] = name
            stats[name] = queue
            if target is not None:
                raw, account = target
                dead.setdefault(self.settings.label(raw), (raw, account, name))
        for dlq, (raw, account, source) in sorted(dead.items()):
            if dlq not in stats:
                url = self._dlq_url(dlq, raw, account, source, deadline)
                stats[dlq] = self._stats(dlq, url, deadline, client_of=source)[0]
        return ProbeResult(
            queues=tuple(stats.values()),
            dead_letter_targets=frozenset(dead),
            info={"transport": TRANSPORT, "version": "", "eviction_policy": ""},
        )

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()

    def queue_url(self, name: str, deadline: Deadline) -> str | None:
        """The URL of the queue (configured, predefined or found), None if SQS has none."""
        return self._url(name, deadline)

    def client_for(self, name: str) -> Any:
        """The client with the queue's credentials (a predefined queue's own)."""
        return self._client(name)

    # -- one queue -------------------------------------------------------------------

    def _url(self, name: str, deadline: Deadline) -> str | None:
        """The queue's URL (cached), or None when SQS has no such queue."""
        if name in self._urls:
            return self._urls[name]
        own = self.settings.predefined.get(name)
        if own is not None:
            url = own.get("url")
            return str(url) if url else None
        return self._lookup(
            name, self._client(), deadline, QueueName=sqs_name(name, self.settings.prefix)
        )

    def _dlq_url(
        self, dlq: str, raw: str, account: str | None, source: str, deadline: Deadline
    ) -> str | None:
        for own in self.settings.predefined.values():
            url = str(own.get("url", ""))
            if url.rstrip("/").rsplit("/", 1)[-1] == raw:
                return url
        if dlq in self._urls:
            return self._urls[dlq]
        return self._lookup(
            dlq,
            self._client(source),
            deadline,
            QueueName=raw,
            **({"QueueOwnerAWSAccountId": account} if account else {}),
        )

    def _lookup(self, name: str, client: Any, deadline: Deadline, **query: str) -> str | None:
        """GetQueueUrl, remembered; None when SQS has no such queue."""
        deadline.left()
        try:
            url = str(client.get_queue_url(**query)["QueueUrl"])
        except Exception as error:
            if error_code(error) in NOT_FOUND:
                return None
            raise
        self._urls[name] = url
        return url

    def _stats(
        self, name: str, url: str | None, deadline: Deadline, *, client_of: str | None = None
    ) -> tuple[QueueStats, tuple[str, str | None] | None]:
        """The queue's numbers, and (its DLQ's SQS name, account) from its redrive policy."""
        if url is None:
            return QueueStats(name, exists=False), None
        deadline.left()
        try:
            answer = self._client(client_of or name).get_queue_attributes(
                QueueUrl=url, AttributeNames=list(attributes.PROBED)
            )
        except Exception as error:
            if error_code(error) not in NOT_FOUND:
                raise
            self._urls.pop(name, None)  # deleted (or the server lost it): look it up again
            return QueueStats(name, exists=False), None
        told = answer.get("Attributes", {})
        redrive = parse_redrive(told.get(attributes.REDRIVE_POLICY))
        visibility = attributes.count(told, attributes.VISIBILITY_TIMEOUT)
        queue = QueueStats(
            name,
            exists=True,
            ready=attributes.count(told, attributes.READY),
            unacked=attributes.count(told, attributes.IN_FLIGHT),
            delayed=attributes.count(told, attributes.DELAYED),
            visibility_timeout=None if visibility is None else float(visibility),
            max_receive_count=redrive[2] if redrive else None,
        )
        return queue, (None if redrive is None else (redrive[0], redrive[1]))
