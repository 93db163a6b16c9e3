"""`metering worker`: the faust-streaming app that runs the account and usage processors.

Each agent consumes its topic in batches (`take_events`: up to BATCH_SIZE records or
BATCH_WINDOW_S), hands them to a processor, publishes the outputs and only then lets faust
acknowledge the batch (offsets are committed from acknowledgements). We do not rely on
faust's exactly-once mode: every Redis write is idempotent on its own (see
`metering.enforcement`).

A batch is never given up: Redis or Kafka errors are retried with back-off. Anything
unexpected stops the process at once (`os._exit`), because leaving the agent's loop with
an exception would let faust acknowledge the batch as if it had been handled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import faust
from confluent_kafka import KafkaException
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.notify import BatchResult, record_marks, resume_past_months
from metering.enforcement.publisher import Publisher, PublishFailed
from metering.enforcement.records import SourceRecord, month_of
from metering.enforcement.usage_processor import UsageProcessor
from metering.settings import Settings

log = logging.getLogger("metering.worker")

BATCH_SIZE = 2000
BATCH_WINDOW_S = 0.05
RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
EXIT_UNEXPECTED = 70
NEW_MONTH_CHECK_S = 60.0
RETRYABLE = (RedisConnectionError, RedisTimeoutError, KafkaException, PublishFailed, OSError)


class Processor(Protocol):
    async def process(self, records: Sequence[SourceRecord]) -> BatchResult: ...


def _record(event: Any) -> SourceRecord:
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=round(message.timestamp * 1000),
    )


async def handle_batch(
    processor: Processor, publisher: Publisher, client: Redis, records: Sequence[SourceRecord]
) -> BatchResult:
    """Process, publish, record — retried until it succeeds; each step is idempotent."""
    attempt = 0
    while True:
        try:
            result = await processor.process(records)
            await publisher.publish(result.outputs)
            await record_marks(client, result.marks)
            return result
        except RETRYABLE as exc:
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            log.warning("batch of %d failed (%s); retrying in %.1f s", len(records), exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
        except Exception:
            traceback.print_exc()
            log.critical("unexpected error; exiting so the batch is not acknowledged")
            os._exit(EXIT_UNEXPECTED)


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.group_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_buffer_maxsize=BATCH_SIZE * 2,
        producer_acks=-1,
        # A killed worker's partitions move to the others after 10 s, not faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=20.0,
    )
    client = Redis.from_url(settings.redis_url)
    book = settings.load_price_book()
    publisher = Publisher(settings.kafka_bootstrap)
    topics = settings.topics
    usage = UsageProcessor(
        client,
        book,
        settings.redis_prefix,
        topics,
        balance_levels_nano_usd=settings.balance_levels_nano_usd,
    )
    accounts = AccountProcessor(client, book, settings.redis_prefix, topics)

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    # faust ships no type information for streams.
    async def run(stream: Any, processor: Processor) -> AsyncIterator[None]:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WINDOW_S):
            await handle_batch(processor, publisher, client, [_record(e) for e in events])
            yield None

    @app.agent(raw_topic(topics.account_events), name="account-processor")
    async def account_agent(stream: Any) -> AsyncIterator[None]:
        async for _ in run(stream, accounts):
            yield None

    @app.agent(raw_topic(topics.usage_events), name="usage-processor")
    async def usage_agent(stream: Any) -> AsyncIterator[None]:
        async for _ in run(stream, usage):
            yield None

    @app.timer(interval=NEW_MONTH_CHECK_S)  # type: ignore[untyped-decorator]  # faust is untyped
    async def new_month() -> None:
        """Announce the blocks a new month lifted. Idempotent: a mark is removed only
        after its notification is published, and every worker may run it."""
        month = month_of(datetime.now(UTC))
        while True:
            try:
                result = await resume_past_months(client, settings.redis_prefix, topics, month)
                await publisher.publish(result.outputs)
                await record_marks(client, result.marks)
                return
            except RETRYABLE as exc:
                log.warning("new-month job failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_BACKOFF_S[-1])

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run until SIGTERM/SIGINT (graceful: acknowledged offsets are committed)."""
    from faust.worker import Worker  # noqa: PLC0415 - only needed when running

    from metering.clickhouse.service import spawn_sink_child, stop_child  # noqa: PLC0415

    # The ClickHouse sink runs beside the processors in a child process of its own (its
    # own consumer group, its own core); it dies with this process.
    sink = spawn_sink_child() if settings.sink_in_worker else None
    try:
        app = create_app(settings)
        Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        if sink is not None:
            stop_child(sink)
