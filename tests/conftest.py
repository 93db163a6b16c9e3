"""Test harness: one real stack per session, fresh topics / groups / key prefixes per test.

The session fixture starts the local stack (Kafka in KRaft mode + Redis, as local
processes) unless the configured endpoints already answer — a running `make stack-up`, or
an external cluster named by `METERING_KAFKA_BOOTSTRAP` / `METERING_REDIS_URL` — and at
the end stops only what it started. No Docker engine runs on our machines, so there is no
testcontainers path (docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but untyped there

from metering.settings import Settings

# Dozens of workers start during a session: by default none of them serves metrics (a
# second process on the default port would only log that it is taken). The metrics tests
# give their own processes free ports.
os.environ.setdefault("METERING_METRICS_PORT", "0")
# The scenarios bill fixed past months (2026-09, 2026-10, …) with events sent today: the
# event-age window (35 days by default) would refuse them as `event_too_old`. They run
# with a ten-year window; the tests of the window itself set their own.
os.environ.setdefault("METERING_MAX_EVENT_AGE_DAYS", "3650")
from metering.stack.local import LocalStack, State
from metering.topics import admin_client


@dataclass(frozen=True)
class RunningStack:
    settings: Settings
    admin: AdminClient

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    settings = Settings()
    local = LocalStack(settings)
    components, _ = local.up()
    started = frozenset(c.name for c in components if c.state is State.STARTED)
    yield RunningStack(settings, admin_client(settings.kafka_bootstrap))
    if started:
        local.down(started)


def _unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topic_factory(stack: RunningStack) -> Iterator[Callable[..., str]]:
    """Creates a fresh topic per call (deleted after the test)."""
    created: list[str] = []

    def make(prefix: str = "test", partitions: int = 12) -> str:
        name = _unique(prefix)
        future = stack.admin.create_topics([NewTopic(name, num_partitions=partitions)])[name]
        future.result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for future in stack.admin.delete_topics(created, operation_timeout=30).values():
            # Best effort: a leftover test topic harms nothing.
            with contextlib.suppress(KafkaException):
                future.result(timeout=30)


@pytest.fixture
def consumer_factory(stack: RunningStack) -> Iterator[Callable[..., Consumer]]:
    """Consumers in a fresh group each, reading from the beginning."""
    consumers: list[Consumer] = []

    def make(*topics: str, **overrides: object) -> Consumer:
        config = {
            "bootstrap.servers": stack.bootstrap,
            "group.id": _unique("test-group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **overrides,
        }
        consumer = Consumer(config)
        if topics:
            consumer.subscribe(list(topics))
        consumers.append(consumer)
        return consumer

    yield make
    for consumer in consumers:
        consumer.close()


@pytest.fixture
def redis_prefix(stack: RunningStack) -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client and a key prefix no other test uses; its keys are deleted after."""
    client = redis.Redis.from_url(stack.settings.redis_url)
    prefix = _unique("test") + ":"
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
