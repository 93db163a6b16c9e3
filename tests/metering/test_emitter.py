"""The emitter SDK against a real Kafka broker."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from metering.emitter import DeliveryFailed, Emitter
from schemas.validation import InvalidEvent, Reason
from tests.conftest import RunningStack
from tests.helpers import body, consume, key

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def usage(org: str, seq: int, **overrides: Any) -> dict[str, Any]:
    event = {
        "event_id": f"evt_{org}_{seq:06d}",
        "org_id": org,
        "user_id": f"u_{seq % 7}",
        "surface": "claude_code",
        "model": "claude-sonnet-4-5",
        "input_tokens": 1000 + seq,
        "output_tokens": 200,
        "occurred_at": (NOW - timedelta(seconds=10_000 - seq)).isoformat(),
    }
    event.update(overrides)
    return event


def end_offsets(consumer: Consumer, topic: str, partitions: int) -> int:
    return sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(partitions)
    )


@pytest.mark.stack
def test_ten_thousand_events_arrive_exactly_once_keyed_and_in_org_order(
    stack: RunningStack,
    topic_factory: Callable[..., str],
    consumer_factory: Callable[..., Consumer],
) -> None:
    """10,000 events from 37 orgs, emitted interleaved, are all on the topic exactly once,
    keyed by org, every org on one partition and in the order it emitted them."""
    # Given a fresh 12-partition topic and an emitter with a fixed clock
    topic = topic_factory("emitter", partitions=12)
    orgs = [f"org_{n:02d}" for n in range(37)]
    sent = [usage(orgs[i % len(orgs)], i) for i in range(10_000)]

    # When every event is emitted and the emitter is closed
    with Emitter(stack.bootstrap, usage_topic=topic, clock=lambda: NOW) as emitter:
        futures = [emitter.emit_usage(event) for event in sent]
    assert all(f.done() and f.exception() is None for f in futures)
    assert emitter.delivered == 10_000

    # Then a plain consumer reads each event exactly once
    messages = consume(consumer_factory(topic), 10_000)
    ids = [body(m)["event_id"] for m in messages]
    assert len(ids) == 10_000
    assert sorted(ids) == sorted(e["event_id"] for e in sent)

    # …keyed by org, each org on a single partition, in emission order within the org
    partitions_by_org: dict[str, set[int]] = defaultdict(set)
    seqs_by_org: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        event = body(message)
        assert key(message) == event["org_id"]
        partition = message.partition()
        assert partition is not None
        partitions_by_org[event["org_id"]].add(partition)
        seqs_by_org[event["org_id"]].append(int(event["event_id"].rsplit("_", 1)[1]))
    assert all(len(p) == 1 for p in partitions_by_org.values())
    assert len({p for ps in partitions_by_org.values() for p in ps}) > 1  # spread out
    for org, seqs in seqs_by_org.items():
        assert seqs == sorted(seqs), f"{org} out of order"


@pytest.mark.stack
def test_events_are_sent_in_canonical_form(
    stack: RunningStack,
    topic_factory: Callable[..., str],
    consumer_factory: Callable[..., Consumer],
) -> None:
    """An event given with a +02:00 offset and no cache fields is sent normalised: UTC,
    every field present, so the pipeline compares payloads byte for byte."""
    topic = topic_factory("canonical", partitions=1)
    raw = usage("org_c", 1, occurred_at="2026-11-24T13:00:00.5+02:00")
    with Emitter(stack.bootstrap, usage_topic=topic, clock=lambda: NOW) as emitter:
        emitter.emit_usage(json.dumps(raw))
    [message] = consume(consumer_factory(topic), 1)
    sent = body(message)
    assert sent["occurred_at"] == "2026-11-24T11:00:00.500000Z"
    assert sent["cache_creation_input_tokens"] == 0
    assert sent["cache_read_input_tokens"] == 0


@pytest.mark.stack
@pytest.mark.parametrize(
    ("overrides", "reason", "field"),
    [
        ({"input_tokens": -1}, Reason.NEGATIVE_TOKENS, "input_tokens"),
        ({"surface": "smart_fridge"}, Reason.UNKNOWN_SURFACE, "surface"),
        ({"occurred_at": "2026-11-24T12:00:00"}, Reason.NAIVE_TIMESTAMP, "occurred_at"),
        ({"occurred_at": "2026-11-24T12:05:01Z"}, Reason.FUTURE_EVENT, "occurred_at"),
        ({"colour": "red"}, Reason.UNKNOWN_FIELD, "colour"),
    ],
)
def test_invalid_event_raises_and_sends_nothing(
    stack: RunningStack,
    topic_factory: Callable[..., str],
    consumer_factory: Callable[..., Consumer],
    overrides: dict[str, Any],
    reason: Reason,
    field: str,
) -> None:
    """An invalid event raises InvalidEvent naming the field and reason; nothing reaches
    the topic, and the emitter stays usable."""
    topic = topic_factory("invalid", partitions=1)
    with Emitter(stack.bootstrap, usage_topic=topic, clock=lambda: NOW) as emitter:
        with pytest.raises(InvalidEvent) as caught:
            emitter.emit_usage(usage("org_i", 1, **overrides))
        assert caught.value.reason is reason
        assert caught.value.field == field
        emitter.emit_usage(usage("org_i", 2))  # the next, valid event still goes out
    consumer = consumer_factory()
    assert end_offsets(consumer, topic, 1) == 1


@pytest.mark.stack
def test_account_events_go_to_their_topic_keyed_by_org(
    stack: RunningStack,
    topic_factory: Callable[..., str],
    consumer_factory: Callable[..., Consumer],
) -> None:
    """Account events are validated with their own schema and keyed by org."""
    topic = topic_factory("account", partitions=3)
    event = {
        "event_id": "a1",
        "type": "credits.purchased",
        "org_id": "org_a",
        "occurred_at": "2026-11-24T11:00:00Z",
        "actor": {"user_id": "u1", "role": "owner"},
        "data": {"purchase_id": "pay_1", "amount": "100.00"},
    }
    with Emitter(stack.bootstrap, account_topic=topic, clock=lambda: NOW) as emitter:
        emitter.emit_account(event)
        with pytest.raises(InvalidEvent) as caught:
            emitter.emit_account({**event, "data": {"purchase_id": "pay_2", "amount": 100}})
        assert caught.value.reason is Reason.INVALID_MONEY
    [message] = consume(consumer_factory(topic), 1)
    assert message.key() == b"org_a"
    assert body(message)["data"]["amount"] == "100.00"


@pytest.mark.stack
def test_delivery_failure_reaches_the_caller(stack: RunningStack) -> None:
    """An event the broker never takes (its topic does not exist; auto-creation is off)
    fails its future and makes flush() raise, instead of vanishing."""
    emitter = Emitter(
        stack.bootstrap,
        usage_topic="no.such.topic.v1",
        clock=lambda: NOW,
        producer_overrides={"message.timeout.ms": 3000},
    )
    future = emitter.emit_usage(usage("org_x", 1))
    with pytest.raises(DeliveryFailed):
        emitter.flush(timeout_s=30)
    assert isinstance(future.exception(timeout=1), KafkaException)
