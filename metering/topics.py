"""The Kafka topics of SPEC §4, their retention, and idempotent creation.

Kafka is the log of record: Redis and ClickHouse are rebuilt by replaying it (G3), so the
topics that feed a rebuild keep their data forever unless an operator decides otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but untyped there

USAGE_EVENTS = "usage.events.v1"
ACCOUNT_EVENTS = "account.events.v1"
USAGE_PRICED = "usage.priced.v1"
USAGE_DEADLETTER = "usage.deadletter.v1"
NOTIFICATIONS = "billing.notifications.v1"

_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
_NINETY_DAYS_MS = str(90 * 24 * 3600 * 1000)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    purpose: str
    config: dict[str, str] = field(default_factory=dict)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(USAGE_EVENTS, "raw usage events from product services", _FOREVER),
    TopicSpec(ACCOUNT_EVENTS, "org/member/seat/cap/credit/contract changes", _FOREVER),
    TopicSpec(USAGE_PRICED, "accepted, priced usage (written by the pipeline)", _FOREVER),
    TopicSpec(USAGE_DEADLETTER, "rejected input with reason and source offset", _FOREVER),
    TopicSpec(
        NOTIFICATIONS, "threshold and stop/resume notifications", {"retention.ms": _NINETY_DAYS_MS}
    ),
)


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool  # False: it existed already and was left as it was


def admin_client(bootstrap: str) -> AdminClient:
    # librdkafka logs through Python logging instead of straight to stderr.
    return AdminClient(
        {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000},
        logger=logging.getLogger("metering.kafka"),
    )


def ensure_topics(
    admin: AdminClient,
    partitions: int,
    specs: tuple[TopicSpec, ...] = TOPICS,
    timeout_s: float = 30.0,
) -> list[TopicState]:
    """Create whatever topic is missing; leave existing ones untouched. Safe to repeat,
    and safe when two processes race (TOPIC_ALREADY_EXISTS is success)."""
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
