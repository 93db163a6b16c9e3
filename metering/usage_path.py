"""The usage hot path of `metering worker`: usage.events.v1 → Redis → usage.priced.v1.

A `BatchLoop` (confluent-kafka, in a thread of its own) hands each consumed batch to
`UsageWork`, which:

1. applies it: `UsageProcessor.process` runs the batch's Lua scripts in one pipelined
   round trip and decides every output (priced, dead-lettered, notifications with their
   marks) — retried while Redis is unreachable, the group kept meanwhile;
2. produces the outputs at once, in order (acks=all);
3. settles it when the broker has acknowledged every output: then, and only then, the
   loop commits the batch's offsets (after every earlier batch's). Outputs that failed
   are produced again (consumers de-duplicate by event_id and notification_id).

A batch that made notifications due is settled before the next batch is applied: its
marks are recorded in Redis once the broker has the notifications, and the next
batch's scripts must see them, or they would notify again.

No faust on this path: its per-message machinery cost more than all the billing work
(docs/decisions.md › The usage hot path off faust).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from threading import Event

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering import kafka_clients
from metering.batch_loop import Abandoned, BatchLoop
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.notify import record_marks_sync
from metering.enforcement.publisher import Acks, Publisher
from metering.enforcement.records import SourceRecord
from metering.enforcement.usage_processor import UsageProcessor
from metering.metrics import (
    CONSUMER_LAG,
    USAGE,
    WORKER_BATCH_RETRIES,
    WORKER_BATCH_SECONDS,
    WORKER_BATCH_SIZE,
    WORKER_DELIVERY_SECONDS,
    WORKER_EVENTS_CONSUMED,
    record_worker_batch,
)
from metering.retry import backoff_s
from metering.settings import Settings

log = logging.getLogger("metering.worker")

MAX_RECORDS = 5000  # per consumed batch
MAX_IN_FLIGHT = 3  # batches applied and produced, waiting for the broker's acks
RETRYABLE_REDIS = (RedisConnectionError, RedisTimeoutError, OSError)


class _Batch:
    """One batch between production and settlement."""

    __slots__ = ("acks", "attempt", "produced_at", "result", "retry_at", "settled_flag")

    def __init__(self, result: BatchResult, acks: Acks) -> None:
        self.result = result
        self.acks = acks
        self.produced_at = time.perf_counter()
        self.attempt = 0
        self.retry_at = 0.0
        self.settled_flag = False

    def settled(self) -> bool:
        return self.settled_flag


class UsageWork:
    def __init__(
        self, processor: UsageProcessor, publisher: Publisher, client: redis.Redis, prefix: str
    ) -> None:
        self._processor = processor
        self._publisher = publisher
        self._redis = client
        self._prefix = prefix
        self._waiting: deque[_Batch] = deque()  # produced, not settled: in batch order
        self._batch_seconds = WORKER_BATCH_SECONDS.labels(USAGE)
        self._delivery_seconds = WORKER_DELIVERY_SECONDS.labels(USAGE)
        self._apply_retries = WORKER_BATCH_RETRIES.labels(USAGE, "apply")
        self._publish_retries = WORKER_BATCH_RETRIES.labels(USAGE, "publish")

    def handle(self, records: Sequence[SourceRecord], loop: BatchLoop) -> _Batch:
        started = time.perf_counter()
        result = self._apply(records, loop)
        self._batch_seconds.observe(time.perf_counter() - started)
        batch = _Batch(result, self._publisher.produce(result.outputs))
        self._waiting.append(batch)
        if result.marks:
            while not batch.settled_flag:  # the next batch's scripts must see the marks
                loop.keep_alive(0.001)
        return batch

    def _apply(self, records: Sequence[SourceRecord], loop: BatchLoop) -> BatchResult:
        """Retried while Redis is unreachable (the scripts are idempotent: a replayed
        record is recognised, never counted twice)."""
        attempt = 0
        while True:
            try:
                return self._processor.process(records)
            except RETRYABLE_REDIS as exc:
                self._apply_retries.inc()
                delay = backoff_s(attempt)
                log.warning(
                    "usage batch of %d failed (%s); retrying in %.1f s", len(records), exc, delay
                )
                loop.keep_alive(delay)
                if loop.abandoned:
                    raise Abandoned from exc
                attempt += 1

    def serve(self) -> None:
        """Delivery reports; settle the batches the broker has, re-send failed ones."""
        self._publisher.poll()
        now = time.perf_counter()
        for batch in self._waiting:
            if batch.acks.done() and not batch.settled_flag:
                self._settle_or_resend(batch, now)
        while self._waiting and self._waiting[0].settled_flag:
            self._waiting.popleft()

    def _settle_or_resend(self, batch: _Batch, now: float) -> None:
        if batch.acks.errors:
            if now < batch.retry_at:
                return
            self._publish_retries.inc()
            log.warning(
                "publishing %d outputs failed (%d: %s); producing them again",
                len(batch.result.outputs),
                len(batch.acks.errors),
                batch.acks.errors[0],
            )
            batch.retry_at = now + backoff_s(batch.attempt)
            batch.attempt += 1
            batch.acks = self._publisher.produce(batch.result.outputs)
            return
        if batch.result.marks:
            try:
                record_marks_sync(self._redis, self._prefix, batch.result.marks)
            except RETRYABLE_REDIS as exc:  # tried again on the next turn
                log.warning("recording notification marks failed (%s); retrying", exc)
                return
        self._delivery_seconds.observe(now - batch.produced_at)
        record_worker_batch(USAGE, batch.result)
        batch.settled_flag = True


def usage_loop(settings: Settings) -> BatchLoop:
    client = redis.Redis.from_url(settings.redis_url)
    processor = UsageProcessor(
        client,
        settings.load_price_book(),
        settings.redis_prefix,
        settings.topics,
        balance_levels_nano_usd=settings.balance_levels_nano_usd,
    )
    consumer = kafka_clients.consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.usage_group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # A killed worker's partitions move to the others after 10 s.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            "max.poll.interval.ms": 300_000,
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 5,  # low rates: a record is not held back for a full fetch
        }
    )
    work = UsageWork(processor, Publisher(settings.kafka_bootstrap), client, settings.redis_prefix)
    consumed = WORKER_EVENTS_CONSUMED.labels(USAGE)
    sizes = WORKER_BATCH_SIZE.labels(USAGE)

    def on_batch(size: int) -> None:
        consumed.inc(size)
        sizes.observe(size)

    lag = CONSUMER_LAG.labels(settings.usage_group_id, settings.topics.usage_events)
    return BatchLoop(
        consumer,
        [settings.topics.usage_events],
        work,
        max_records=MAX_RECORDS,
        max_in_flight=MAX_IN_FLIGHT,
        on_batch=on_batch,
        on_lag=lag.set,
    )


def run_usage_path(settings: Settings, stop: Event) -> None:
    """Until `stop` is set (then what is in flight settles and is committed)."""
    usage_loop(settings).run(stop)
