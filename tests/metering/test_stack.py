"""`metering stack`: a private stack on its own ports and folder, so the session's stack
is never disturbed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from metering.emitter import Emitter
from metering.settings import Settings
from metering.stack.endpoints import kafka_endpoint, redis_endpoint
from metering.stack.kafka_broker import check_java
from metering.stack.local import LocalStack, State
from metering.stack.process import StackError
from metering.stack.redis_server import check_redis_server
from metering.topics import ACCOUNT_EVENTS, TOPICS
from tests.helpers import body, consume, run_metering

# Ports no default service uses; the private broker's controller takes port + 1.
PRIVATE_KAFKA = "localhost:19192"
PRIVATE_REDIS = "redis://localhost:16479/0"


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = Settings(
        kafka_bootstrap=PRIVATE_KAFKA,
        redis_url=PRIVATE_REDIS,
        var_dir=tmp_path / "var",
        topic_partitions=3,
        kafka_heap="384m",
    )
    local = LocalStack(settings)
    yield local
    local.down()


@pytest.mark.stack
def test_up_twice_is_a_no_op_and_down_up_keeps_account_events(private_stack: LocalStack) -> None:
    """A stack started twice keeps the same processes and topics; stopped and started
    again, it still holds the account events written before (storage is not re-formatted)."""
    # Given a stack brought up from nothing
    components, topics = private_stack.up()
    assert [c.state for c in components] == [State.STARTED, State.STARTED]
    assert components[0].detail == "storage formatted"
    assert {t.name for t in topics} == {spec.name for spec in TOPICS}
    assert all(t.created and t.partitions == 3 for t in topics)
    pids = [c.pid for c in components]

    # When `up` runs again, nothing changes
    again, topics_again = private_stack.up()
    assert [c.state for c in again] == [State.RUNNING, State.RUNNING]
    assert [c.pid for c in again] == pids
    assert not any(t.created for t in topics_again)

    # And an account event written, the stack stopped and started again
    event = {
        "event_id": "acct_keep_1",
        "type": "org.created",
        "org_id": "org_keep",
        "occurred_at": "2026-11-01T00:00:00Z",
        "actor": None,
        "data": {
            "plan": "usage_based",
            "billing_mode": "self_serve",
            "term_start": "2026-11-01",
            "seats": {"enterprise": 5},
        },
    }
    with Emitter(PRIVATE_KAFKA, clock=lambda: datetime(2026, 11, 24, tzinfo=UTC)) as emitter:
        emitter.emit_account(event)
    stopped = private_stack.down()
    assert [c.state for c in stopped] == [State.STOPPED, State.STOPPED]
    assert [c.state for c in private_stack.status()[:2]] == [State.DOWN, State.DOWN]
    restarted, _ = private_stack.up()
    assert [c.state for c in restarted] == [State.STARTED, State.STARTED]
    assert restarted[0].detail == ""  # not re-formatted

    # Then the account event is still on its topic
    consumer = Consumer(
        {
            "bootstrap.servers": PRIVATE_KAFKA,
            "group.id": "keep-check",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([ACCOUNT_EVENTS])
    try:
        [message] = consume(consumer, 1)
    finally:
        consumer.close()
    assert body(message)["event_id"] == "acct_keep_1"


@pytest.mark.stack
def test_status_reports_every_component_with_its_endpoint(private_stack: LocalStack) -> None:
    """Before `up` both services are down; the CLI's status exits non-zero then."""
    rows = private_stack.status()
    assert [(r.name, r.state, r.endpoint) for r in rows[:2]] == [
        ("kafka", State.DOWN, "localhost:19192"),
        ("redis", State.DOWN, "localhost:16479"),
    ]
    assert rows[2].name == "clickhouse" and rows[2].state is State.EMBEDDED
    result = run_metering(
        "stack",
        "status",
        METERING_KAFKA_BOOTSTRAP=PRIVATE_KAFKA,
        METERING_REDIS_URL=PRIVATE_REDIS,
        METERING_VAR_DIR=str(private_stack.settings.var_dir),
    )
    assert result.returncode == 1
    assert "localhost:19192" in result.stdout and "down" in result.stdout


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    """With no java on PATH, `metering stack up` says what to install, in one line."""
    result = run_metering(
        "stack",
        "up",
        PATH=str(tmp_path),
        METERING_KAFKA_BOOTSTRAP=PRIVATE_KAFKA,
        METERING_REDIS_URL=PRIVATE_REDIS,
        METERING_VAR_DIR=str(tmp_path / "var"),
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: Java not found: install Java 17+ (apt-get install openjdk-17-jre-headless)"
    ]


def test_missing_prerequisites_name_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each prerequisite check names what to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="apt-get install redis-server"):
        check_redis_server()
    with pytest.raises(StackError, match="Java 17"):
        check_java()


def test_remote_endpoints_are_never_started() -> None:
    """Only loopback endpoints are started by `stack up`; a cluster list or a remote host
    is taken as external."""
    assert kafka_endpoint("localhost:9092").is_local
    assert not kafka_endpoint("broker-1.prod:9092,broker-2.prod:9092").is_local
    assert redis_endpoint("redis://127.0.0.1:6380/0").port == 6380
    assert not redis_endpoint("rediss://cache.prod:6379/0").is_local
    with pytest.raises(StackError, match="host:port"):
        kafka_endpoint("no-port-here")
