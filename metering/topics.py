"""The Kafka topics of SPEC §4, their retention, and idempotent creation.

Kafka is the log of record: Redis and ClickHouse are rebuilt by replaying it (G3), so the
topics that feed a rebuild keep their data forever unless an operator decides otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# Re-exported by confluent_kafka.admin without types; these modules carry them.
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._metadata import BrokerMetadata, ClusterMetadata
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but untyped there

from metering import kafka_clients

USAGE_EVENTS = "usage.events.v1"
ACCOUNT_EVENTS = "account.events.v1"
ACCOUNT_OUTCOMES = "account.outcomes.v1"
USAGE_PRICED = "usage.priced.v1"
USAGE_DEADLETTER = "usage.deadletter.v1"
NOTIFICATIONS = "billing.notifications.v1"
DOCUMENTS = "billing.documents.v1"
NOTIFICATION_MARKS = "billing.notification_marks.v1"
NOTIFICATION_DELIVERIES = "billing.notification_deliveries.v1"
NOTIFICATION_DEADLETTER = "billing.notification_deadletter.v1"

_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
# The broker stamps input records on arrival: the future-event check (G4) compares with
# that stamp, so a replay judges every event exactly as the first run did (G2), and a
# producer cannot backdate the check with its own clock.
_INPUT = {**_FOREVER, "message.timestamp.type": "LogAppendTime"}
_NINETY_DAYS_MS = str(90 * 24 * 3600 * 1000)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    purpose: str
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicNames:
    """The topic names, optionally under a namespace (`METERING_TOPIC_NAMESPACE`): the
    contract names are the default; tests and side-by-side deployments use a prefix."""

    namespace: str = ""

    @property
    def usage_events(self) -> str:
        return self.namespace + USAGE_EVENTS

    @property
    def account_events(self) -> str:
        return self.namespace + ACCOUNT_EVENTS

    @property
    def account_outcomes(self) -> str:
        return self.namespace + ACCOUNT_OUTCOMES

    @property
    def usage_priced(self) -> str:
        return self.namespace + USAGE_PRICED

    @property
    def usage_deadletter(self) -> str:
        return self.namespace + USAGE_DEADLETTER

    @property
    def notifications(self) -> str:
        return self.namespace + NOTIFICATIONS

    @property
    def documents(self) -> str:
        return self.namespace + DOCUMENTS

    @property
    def notification_marks(self) -> str:
        return self.namespace + NOTIFICATION_MARKS

    @property
    def notification_deliveries(self) -> str:
        return self.namespace + NOTIFICATION_DELIVERIES

    @property
    def notification_deadletter(self) -> str:
        return self.namespace + NOTIFICATION_DEADLETTER

    def specs(self) -> tuple[TopicSpec, ...]:
        return (
            TopicSpec(self.usage_events, "raw usage events from product services", _INPUT),
            TopicSpec(self.account_events, "org/member/seat/cap/credit/contract changes", _INPUT),
            TopicSpec(
                self.account_outcomes,
                "each account event's outcome (accepted, or rejected and why) and the org's "
                "plan after it (written by the pipeline)",
                _FOREVER,
            ),
            TopicSpec(
                self.usage_priced, "accepted, priced usage (written by the pipeline)", _FOREVER
            ),
            TopicSpec(
                self.usage_deadletter, "rejected input with reason and source offset", _FOREVER
            ),
            TopicSpec(
                self.notifications,
                "threshold and stop/resume notifications",
                {"retention.ms": _NINETY_DAYS_MS},
            ),
            TopicSpec(
                self.documents,
                "issued documents: monthly ones with the log positions they cover (billing "
                "run), seat invoices (account processor)",
                _FOREVER,
            ),
            TopicSpec(
                self.notification_marks,
                "which notifications were sent (compacted): what `metering rebuild` restores "
                "so none is sent twice, kept as long as it matters",
                {"cleanup.policy": "compact"},
            ),
            TopicSpec(
                self.notification_deliveries,
                "each delivery attempt of a notification (webhook, email) and the schedule "
                "of its retries, which the notifier reads back",
                {"retention.ms": _NINETY_DAYS_MS},
            ),
            TopicSpec(
                self.notification_deadletter,
                "deliveries given up (retries exhausted, refused by the receiver, address "
                "not allowed) with the reason; re-drivable",
                _FOREVER,
            ),
        )


DEFAULT_TOPICS = TopicNames()
TOPICS: tuple[TopicSpec, ...] = DEFAULT_TOPICS.specs()


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool  # False: it existed already and was left as it was


def admin_client(bootstrap: str) -> AdminClient:
    return kafka_clients.admin({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def _align_configs(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    """Bring existing topics to the configuration this version expects (incremental: only
    the keys we own are set; anything an operator added stays)."""
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in spec.config.items()
            ],
        )
        for spec in specs
        if spec.config
    ]
    if resources:
        for future in admin.incremental_alter_configs(
            resources, request_timeout=timeout_s
        ).values():
            future.result()


def ensure_topics(
    admin: AdminClient,
    partitions: int,
    specs: tuple[TopicSpec, ...] = TOPICS,
    timeout_s: float = 30.0,
) -> list[TopicState]:
    """Create whatever topic is missing and align the configs of existing ones; partition
    counts of existing topics are never changed. Safe to repeat, and safe when two
    processes race (TOPIC_ALREADY_EXISTS is success)."""
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [spec for spec in specs if spec.name not in existing]
    created = _create(admin, missing, partitions, timeout_s)
    _align_configs(admin, [spec for spec in specs if spec not in missing], timeout_s)
    # A topic another process created meanwhile has whatever partitions it asked for.
    counts = wait_until_every_broker_knows(
        admin,
        {spec.name: partitions if spec.name in created else None for spec in specs},
        timeout_s,
    )
    return [TopicState(spec.name, counts[spec.name], spec.name in created) for spec in specs]


def _create(
    admin: AdminClient, specs: list[TopicSpec], partitions: int, timeout_s: float
) -> set[str]:
    """Create `specs` with the broker's default replication; returns the names this call
    created (not those another process created first)."""
    if not specs:
        return set()
    futures = admin.create_topics(
        [
            NewTopic(
                spec.name, num_partitions=partitions, replication_factor=-1, config=spec.config
            )
            for spec in specs
        ],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    created = set()
    for name, future in futures.items():
        try:
            future.result()
            created.add(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


# -- every broker knows the topics ----------------------------------------------------
METADATA_POLL_S = 0.1


def _lacks(metadata: ClusterMetadata, name: str, partitions: int | None) -> str:
    """What `metadata` lacks of topic `name` ("" if nothing): the topic, its `partitions`
    partitions (any number if None, but at least one), or a leader for one of them."""
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None:
        return f"{name} ({topic.error.str() if topic and topic.error else 'unknown'})"
    found = sorted(topic.partitions)
    if not found or found != list(range(partitions or len(found))):
        return f"{name} ({len(found)} of {partitions or '≥ 1'} partitions)"
    for p in found:
        partition = topic.partitions[p]
        if partition.error is not None or partition.leader not in metadata.brokers:
            return f"{name} (no leader for partition {p})"
    return ""


def _sender(metadata: ClusterMetadata) -> int:
    """The node id of the broker that sent `metadata` (-1: not known). librdkafka names
    it "host:port/<node id>", or "host:port/bootstrap" before it has learned the id
    ("proto://" first unless plaintext)."""
    if metadata.orig_broker_id >= 0:
        return int(metadata.orig_broker_id)
    address = (metadata.orig_broker_name or "").rsplit("/", 1)[0].split("://")[-1]
    found = (b.id for b in metadata.brokers.values() if f"{b.host}:{b.port}" == address)
    return int(next(found, -1))


class _Survey:
    """What each broker's own metadata lacks of the `wanted` topics. librdkafka sends a
    metadata request to whichever broker it picks — a client bootstrapped with one
    broker's address was seen answered by another — so every answer is filed under the
    broker that sent it, and each broker not heard from with everything is asked again
    through a client bootstrapped with its address (a new one when another answered)."""

    def __init__(self, brokers: dict[int, BrokerMetadata], wanted: dict[str, int | None]):
        self.wanted = wanted
        self.addresses = {node: f"{b.host}:{b.port}" for node, b in brokers.items()}
        self.lacks = dict.fromkeys(brokers, "not heard from")
        self._clients: dict[int, AdminClient] = {}  # made when first needed

    def _client(self, node: int, fresh: bool = False) -> AdminClient:
        if fresh or node not in self._clients:
            self._clients[node] = admin_client(self.addresses[node])
        return self._clients[node]

    def file(self, metadata: ClusterMetadata) -> int:
        """Record what the sender of `metadata` lacks; returns its node id."""
        sender = _sender(metadata)
        if len(self.lacks) == 1:  # the one broker (its bootstrap name may be another)
            sender = next(iter(self.lacks))
        if sender in self.lacks:
            missing = (_lacks(metadata, name, count) for name, count in self.wanted.items())
            self.lacks[sender] = ", ".join(text for text in missing if text)
        return sender

    def ask_again(self, timeout_s: float) -> None:
        for node in [node for node, lacks in self.lacks.items() if lacks]:
            try:
                sender = self.file(self._client(node).list_topics(timeout=timeout_s))
            except KafkaException as exc:
                self.lacks[node] = f"no answer ({exc.args[0].str()})"
                continue
            if sender != node:  # a new client may well ask its bootstrap broker
                self._client(node, fresh=True)

    def missing(self) -> str:
        return "; ".join(f"{self.addresses[n]}: {text}" for n, text in self.lacks.items() if text)


def wait_until_every_broker_knows(
    admin: AdminClient, wanted: dict[str, int | None], timeout_s: float
) -> dict[str, int]:
    """Wait until every broker's metadata has each topic of `wanted` (name → partitions,
    or None for any number) with all its partitions and a leader for each; returns the
    partition counts. Creating a topic returns once the controller has it; each broker
    learns it a moment later, and meanwhile answers UNKNOWN_TOPIC_OR_PART (a
    describe_configs, a produce, a consumer's metadata) or lists it without partitions.
    One broker: its answers through `admin`, so the single-node path stays one round
    trip. Raises TimeoutError naming what each broker lacks."""
    deadline = time.monotonic() + timeout_s
    metadata = admin.list_topics(timeout=timeout_s)
    survey = _Survey(metadata.brokers, wanted)
    survey.file(metadata)
    while missing := survey.missing():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"topics not known to every broker after {timeout_s:.0f} s: {missing}"
            )
        time.sleep(METADATA_POLL_S)
        remaining = max(deadline - time.monotonic(), 0.1)
        if len(survey.lacks) == 1:
            metadata = admin.list_topics(timeout=remaining)
            survey.file(metadata)
        else:
            survey.ask_again(min(remaining, 5.0))
    if len(survey.lacks) > 1:  # counts from a broker that knows every topic
        metadata = admin.list_topics(timeout=timeout_s)
    return {name: len(metadata.topics[name].partitions) for name in wanted}


BROKER_RETRY_S = 2.0


def wait_for_topics(
    bootstrap: str, names: Sequence[str], stop: threading.Event, log: logging.Logger
) -> bool:
    """Block until the broker answers and every topic in `names` exists; False if `stop`
    is set first. A process started before Kafka, or before the topics were created
    (`metering stack up`, compose's `topics` job), waits and says what for, instead of
    failing at start (aiokafka cannot bootstrap) or running on without its input (faust
    ignores a missing topic and never looks again)."""
    admin = admin_client(bootstrap)
    said = ""
    while not stop.is_set():
        try:
            existing = admin.list_topics(timeout=BROKER_RETRY_S).topics
            missing = [name for name in names if name not in existing]
            waiting_for = f"topics {', '.join(missing)} to be created" if missing else ""
        except KafkaException as exc:
            waiting_for = f"Kafka at {bootstrap} ({exc.args[0].str()})"
        if not waiting_for:
            if said:
                log.warning("Kafka and its topics are there now; starting")
            return True
        if waiting_for != said:
            log.warning("waiting for %s", waiting_for)
            said = waiting_for
        stop.wait(BROKER_RETRY_S)
    return False


def consumer_lag(bootstrap: str, group_id: str, topics: list[str]) -> int:
    """Records on `topics` that consumer group `group_id` has not committed yet."""
    metadata = admin_client(bootstrap).list_topics(timeout=10).topics
    partitions = [TopicPartition(topic, p) for topic in topics for p in metadata[topic].partitions]
    probe = kafka_clients.consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        lag = 0
        for tp in probe.committed(partitions, timeout=10):
            _low, high = probe.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        probe.close()


def groups_lag(bootstrap: str, inputs: Iterable[tuple[str, str]]) -> int:
    """Records not committed yet, summed over (consumer group, topic) pairs — e.g.
    `Settings.worker_inputs()`, the two processors of `metering worker`."""
    return sum(consumer_lag(bootstrap, group, [topic]) for group, topic in inputs)
