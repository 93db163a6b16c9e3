"""`metering rebuild`: restore the Redis projection from Kafka, the log of record (G3).

1. account.events.v1 from the beginning, through the same fold the worker uses;
2. usage.priced.v1: the usage decisions as they were made live (cost and the
   included/billed split), re-applied by `restore_usage.lua`;
3. billing.notifications.v1: the marks of notifications already sent, so none is sent
   again.
Every step is idempotent (offsets, event_ids, marks), so a rebuild over existing state,
or a second rebuild, changes nothing. Stop the workers first: a worker writing at the
same time is safe for counters but may race the notification marks.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from redis.asyncio import Redis

from billing.notifications import CREDITS_PERIOD
from metering import kafka_clients
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.keys import OrgKeys, orgs_with_stops_key
from metering.enforcement.records import SourceRecord, digest, month_of
from metering.enforcement.scripts import Scripts
from metering.settings import Settings
from metering.topics import admin_client
from schemas.money import parse_usd
from schemas.outputs import Notification, NotificationKind, PricedUsage

BATCH = 5000
Progress = Callable[[str, int], None]


@dataclass
class RebuildReport:
    account_events: int = 0
    priced_events: int = 0
    usage_applied: int = 0
    notifications: int = 0


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
                batch.append(
                    SourceRecord(
                        topic,
                        partition,
                        offset,
                        message.key(),
                        message.value(),
                        message.timestamp()[1],
                    )
                )
                if offset + 1 >= ends[partition]:
                    del ends[partition]
            if batch:
                yield batch
    finally:
        consumer.close()


def notification_mark(notification: Notification) -> tuple[str, str, str] | None:
    """The (op, key-suffix, member) the processor recorded when it published this."""
    if notification.kind is NotificationKind.BALANCE_LOW:
        level = parse_usd(notification.threshold or "0")
        cycle = notification.notification_id.rsplit(":", 1)[1]
        return "sadd", f"notified:{CREDITS_PERIOD}", f"balance|{level}|{cycle}"
    if notification.kind is NotificationKind.THRESHOLD_REACHED:
        subject = "org" if notification.user_id is None else f"u:{notification.user_id}"
        return "sadd", f"notified:{notification.month}", f"{subject}|{notification.threshold}"
    mark = notification.notification_id.removeprefix(
        f"{notification.org_id}:{notification.kind.value}:"
    )
    return ("sadd" if notification.kind is NotificationKind.STOPPED else "srem"), "stopped", mark


async def rebuild(settings: Settings, progress: Progress | None = None) -> RebuildReport:
    report = RebuildReport()
    client = Redis.from_url(settings.redis_url)
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
                by_org[event.org_id] += [
                    event.event_id,
                    digest(event),
                    month_of(event.occurred_at),
                    event.user_id,
                    str(priced.cost_nano_usd),
                    str(priced.included_nano_usd),
                    str(priced.source_partition),
                    str(priced.source_offset),
                ]
            pipe = client.pipeline(transaction=False)
            for org_id, args in by_org.items():
                await scripts.restore_usage(
                    keys=[OrgKeys(prefix, org_id).base], args=args, client=pipe
                )
            report.usage_applied += sum(await pipe.execute())
            report.priced_events += len(batch)
            tick("priced usage", len(batch))

        for batch in read_topic(settings.kafka_bootstrap, topics.notifications):
            pipe = client.pipeline(transaction=False)
            for record in batch:
                notification = Notification.model_validate(json.loads(record.value or b"{}"))
                mark = notification_mark(notification)
                if mark is not None:
                    op, suffix, member = mark
                    key = f"{OrgKeys(prefix, notification.org_id).base}:{suffix}"
                    if op == "sadd":
                        pipe.sadd(key, member)
                        if suffix == "stopped":
                            pipe.sadd(orgs_with_stops_key(prefix), notification.org_id)
                    else:
                        pipe.srem(key, member)
            await pipe.execute()
            report.notifications += len(batch)
            tick("notifications", len(batch))
    finally:
        await client.aclose()
    return report
