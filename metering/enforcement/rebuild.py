"""`metering rebuild`: restore the Redis projection from Kafka, the log of record (G3).

1. account.events.v1 from the beginning, through the same fold the worker uses;
2. usage.priced.v1: the usage decisions as they were made live (cost and the
   included/billed split), re-applied by `restore_usage.lua`; then each month's
   de-duplication marks get their expiry (a month past the event-age window loses them
   at once). Over a projection that was not flushed, a priced event of such a month is
   skipped: its marks are gone, so it could not be recognised as applied already, and
   its counters were not lost (a Redis that lost writes lost its last second);
3. billing.notification_marks.v1 (compacted: kept for as long as a mark matters, unlike
   the notifications themselves): the marks of notifications already sent, so none is
   sent again.
Every step is idempotent (offsets, event_ids, marks), so a rebuild over existing state,
or a second rebuild, changes nothing. Stop the workers first: a worker writing at the
same time is safe for counters but may race the notification marks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from metering import kafka_clients
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.batch_result import Mark
from metering.enforcement.keys import OrgKeys
from metering.enforcement.notify import queue_marks
from metering.enforcement.records import SourceRecord, month_of, source_record
from metering.enforcement.scripts import Scripts, run_pipelined
from metering.enforcement.usage_marks import expire_at, mark_field, needed_until, payload_digest
from metering.redis_clients import async_client
from metering.settings import Settings
from metering.topics import admin_client
from schemas.outputs import PricedUsage
from schemas.validation import encode_event

BATCH = 5000
Progress = Callable[[str, int], None]


@dataclass
class RebuildReport:
    account_events: int = 0
    priced_events: int = 0
    usage_applied: int = 0
    notification_marks: int = 0


def read_topic(bootstrap: str, topic: str) -> Iterator[list[SourceRecord]]:
    """Every record on `topic` up to the end it had when reading started, in batches,
    in offset order per partition."""
    partitions = admin_client(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions
    consumer = kafka_clients.consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "metering-rebuild",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            batch = []
            for message in consumer.consume(num_messages=BATCH, timeout=1.0):
                if message.error():
                    continue
                partition, offset = message.partition(), message.offset()
                if partition not in ends or offset is None or partition is None:
                    continue
                batch.append(source_record(message))
                if offset + 1 >= ends[partition]:
                    del ends[partition]
            if batch:
                yield batch
    finally:
        consumer.close()


async def rebuild(
    settings: Settings, progress: Progress | None = None, *, flushed: bool = False
) -> RebuildReport:
    """`flushed`: the projection was deleted first (every priced event is re-applied)."""
    report = RebuildReport()
    max_age = timedelta(days=settings.max_event_age_days)
    now = datetime.now(UTC)
    marked: set[tuple[str, str]] = set()  # (org, month) whose marks were written
    client = async_client(settings)
    prefix, topics = settings.redis_prefix, settings.topics
    tick = progress or (lambda _stage, _n: None)
    try:
        accounts = AccountProcessor(client, settings.load_price_book(), prefix, topics)
        for batch in read_topic(settings.kafka_bootstrap, topics.account_events):
            await accounts.process(batch)  # outputs were published by the live run
            report.account_events += len(batch)
            tick("account events", len(batch))

        scripts = Scripts(client)
        for batch in read_topic(settings.kafka_bootstrap, topics.usage_priced):
            by_org: dict[str, list[str]] = defaultdict(list)
            for record in batch:
                priced = PricedUsage.model_validate_json(record.value or b"")
                event = priced.event
                month = month_of(event.occurred_at)
                if not flushed and now > needed_until(month, max_age):
                    continue
                marked.add((event.org_id, month))
                by_org[event.org_id] += [
                    mark_field(event.event_id),
                    payload_digest(encode_event(event)),
                    month,
                    event.user_id,
                    str(priced.cost_nano_usd),
                    str(priced.included_nano_usd),
                    str(priced.source_partition),
                    str(priced.source_offset),
                ]
            calls = [(OrgKeys(prefix, org_id).script_keys, args) for org_id, args in by_org.items()]
            replies = await run_pipelined(client, scripts.restore_usage, calls)
            report.usage_applied += sum(replies)
            report.priced_events += len(batch)
            tick("priced usage", len(batch))
        pipe = client.pipeline(transaction=False)
        for org_id, month in sorted(marked):  # in the past: the marks go at once
            pipe.expireat(OrgKeys(prefix, org_id).usage_ids(month), expire_at(month, max_age))
        await pipe.execute()

        for batch in read_topic(settings.kafka_bootstrap, topics.notification_marks):
            pipe = client.pipeline(transaction=False)
            queue_marks(pipe, prefix, [Mark.from_record(r.key or b"", r.value) for r in batch])
            await pipe.execute()
            report.notification_marks += len(batch)
            tick("notification marks", len(batch))
    finally:
        await client.aclose()
    return report
