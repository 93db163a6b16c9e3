"""How far ClickHouse is, as offsets of the input topics. Usage: the ClickHouse sink's
committed offsets on `usage.priced.v1` (everything below is stored: the sink commits
after it inserts). Account events: the account processor's committed offsets on
`account.events.v1`, read before the sink is waited for on `account.outcomes.v1` —
the processor publishes an event's outcome before it commits the event, so once the
sink has stored every outcome published by then, every account event below those
offsets is in the ledger. A document that covers "the org's events below these
offsets" covers exactly what the batch read, and a replay of the log puts every later
event in the same place again (G3, G5)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from metering import kafka_clients
from metering.settings import Settings


@dataclass(frozen=True)
class Watermarks:
    """Committed offsets per partition (index = partition) of the sink's inputs."""

    usage: tuple[int, ...]
    account: tuple[int, ...]


class SinkBehind(TimeoutError):
    pass


def _probe(settings: Settings, group_id: str | None = None) -> Consumer:
    # Never subscribes: it only reads the group's committed offsets and the topic ends.
    return kafka_clients.consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id or settings.sink_group_id,
            "enable.auto.commit": False,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    return [TopicPartition(topic, p) for p in sorted(metadata.partitions)]


def _committed(consumer: Consumer, partitions: list[TopicPartition]) -> list[int]:
    return [max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10)]


def _account_marks(settings: Settings) -> tuple[int, ...]:
    """The account processor's committed offsets on `account.events.v1`."""
    consumer = _probe(settings, settings.group_id)
    try:
        topic = settings.topics.account_events
        return tuple(_committed(consumer, _partitions(consumer, topic)))
    finally:
        consumer.close()


def current_watermarks(settings: Settings) -> Watermarks:
    """How far things are now, without waiting (the preview: an account event decided
    a moment ago may not be stored yet, and is then missing from the draft)."""
    consumer = _probe(settings)
    try:
        topics = settings.topics
        return Watermarks(
            usage=tuple(_committed(consumer, _partitions(consumer, topics.usage_priced))),
            account=_account_marks(settings),
        )
    finally:
        consumer.close()


def _wait_for_group(
    settings: Settings, group_id: str, topics: list[str], deadline: float
) -> Consumer:
    """Wait until `group_id` has committed every partition of `topics` up to the ends they
    have now. Returns the probe (a consumer of that group that never subscribes)."""
    consumer = _probe(settings, group_id)
    partitions = [tp for topic in topics for tp in _partitions(consumer, topic)]
    ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
    while True:
        committed = _committed(consumer, partitions)
        behind = sum(max(end - c, 0) for end, c in zip(ends, committed, strict=True))
        if not behind:
            return consumer
        if time.monotonic() > deadline:
            consumer.close()
            raise SinkBehind(
                f"consumer group {group_id} is still {behind} records behind on "
                f"{', '.join(topics)}; is it running?"
            )
        time.sleep(0.2)


def wait_until_stored(settings: Settings, timeout_s: float = 300.0) -> Watermarks:
    """Wait until every input that exists now is priced by the processors and stored by
    the ClickHouse sink (issued documents included: what a killed batch published is
    stored before anything is issued again), then return how far the sink is. A batch
    that did not wait would bill a month without the events still in the pipeline and
    push them to the next document as late."""
    topics = settings.topics
    deadline = time.monotonic() + timeout_s
    for group, topic in settings.worker_inputs():
        _wait_for_group(settings, group, [topic], deadline).close()
    # Before the sink is waited for: every outcome of an event below these offsets is
    # on account.outcomes.v1 by now, so the wait below covers it.
    account = _account_marks(settings)
    consumer = _wait_for_group(
        settings,
        settings.sink_group_id,
        [topics.usage_priced, topics.account_outcomes, topics.documents],
        deadline,
    )
    try:
        return Watermarks(
            usage=tuple(_committed(consumer, _partitions(consumer, topics.usage_priced))),
            account=account,
        )
    finally:
        consumer.close()
