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
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    spec.name, num_partitions=partitions, replication_factor=-1, config=spec.config
                )
                for spec in missing
            ],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    _align_configs(admin, [spec for spec in specs if spec not in missing], timeout_s)
    created = {spec.name for spec in missing}
    # A new topic's metadata reaches the broker's cache a moment after creation.
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s).topics
        if all(spec.name in metadata and metadata[spec.name].partitions for spec in specs):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_s} s")
        time.sleep(0.1)
    return [
        TopicState(spec.name, len(metadata[spec.name].partitions), spec.name in created)
        for spec in specs
    ]


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
