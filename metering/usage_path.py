"""The usage hot path of `metering worker`: usage.events.v1 → Redis → usage.priced.v1.

A `BatchLoop` (confluent-kafka, in a thread of its own) hands each consumed batch to
`UsageWork`, which:

1. prepares it (validates, prices, builds one Lua script call per org and partition)
   and sends the scripts to Redis in one write — without waiting for the replies: the
   loop consumes and prepares the next batch while Redis runs them;
2. applies it when the next batch is prepared (or none came): reads the replies,
   decides every output (priced, dead-lettered, notifications with their marks) and
   produces them at once, in order (acks=all). Only then are the next batch's scripts
   sent, so Redis sees the batches one after the other. A Redis failure is retried
   (the whole batch again: the scripts are idempotent), the group kept meanwhile;
3. settles it when the broker has acknowledged every output: then, and only then, the
   loop commits the batch's offsets (after every earlier batch's). Outputs that failed
   are produced again (consumers de-duplicate by event_id and notification_id).

A batch that made notifications due is settled before the next batch's scripts are
sent: its marks are recorded in Redis once the broker has the notifications, and the
next batch's scripts must see them, or they would notify again.

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

from metering import kafka_clients
from metering.batch_loop import Abandoned, BatchLoop
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.notify import record_marks_sync
from metering.enforcement.publisher import Acks, Publisher
from metering.enforcement.records import SourceRecord
from metering.enforcement.scripts import SentScriptCalls
from metering.enforcement.usage_processor import PreparedBatch, UsageProcessor
from metering.metrics import (
    CONSUMER_LAG,
    REDIS_APPLY_USAGE,
    USAGE,
    WORKER_BATCH_RETRIES,
    WORKER_BATCH_SECONDS,
    WORKER_BATCH_SIZE,
    WORKER_DELIVERY_SECONDS,
    WORKER_EVENTS_CONSUMED,
    record_worker_batch,
)
from metering.redis_clients import REDIS_RETRYABLE, sync_client_when_reachable
from metering.retry import backoff_s
from metering.settings import Settings

log = logging.getLogger("metering.worker")

MAX_RECORDS = 5000  # per consumed batch
MAX_IN_FLIGHT = 3  # batches applied and produced, waiting for the broker's acks


class _Batch:
    """One batch from hand-over to settlement: prepared → scripts sent → applied (outputs
    produced) → settled (acknowledged, marks recorded)."""

    __slots__ = (
        "acks",
        "attempt",
        "prepared",
        "produced_at",
        "result",
        "retry_at",
        "sent",
        "sent_at",
        "settled_flag",
    )

    def __init__(self, prepared: PreparedBatch) -> None:
        self.prepared = prepared
        self.sent: SentScriptCalls | None = None  # None: (re)send before reading
        self.sent_at = 0.0
        self.result: BatchResult | None = None  # once applied
        self.acks: Acks | None = None
        self.produced_at = 0.0
        self.attempt = 0
        self.retry_at = 0.0  # back-off for a Redis or publish retry
        self.settled_flag = False

    def settled(self) -> bool:
        return self.settled_flag


class UsageWork:
    """The batch loop's work for usage (see the module doc). Batch N+1 is prepared
    (validated, priced, its script calls built) while Redis runs batch N's scripts; N's
    replies are read and its outputs produced before N+1's scripts are sent, so Redis
    still sees the batches one after the other."""

    def __init__(
        self, processor: UsageProcessor, publisher: Publisher, client: redis.Redis, prefix: str
    ) -> None:
        self._processor = processor
        self._publisher = publisher
        self._redis = client
        self._prefix = prefix
        self._unapplied: _Batch | None = None  # scripts sent (or to send), replies unread
        self._waiting: deque[_Batch] = deque()  # handed over, not settled: in batch order
        self._batch_seconds = WORKER_BATCH_SECONDS.labels(USAGE)
        self._delivery_seconds = WORKER_DELIVERY_SECONDS.labels(USAGE)
        self._apply_retries = WORKER_BATCH_RETRIES.labels(USAGE, "apply")
        self._publish_retries = WORKER_BATCH_RETRIES.labels(USAGE, "publish")

    def handle(self, records: Sequence[SourceRecord], loop: BatchLoop) -> _Batch:
        batch = _Batch(self._processor.prepare(records))  # meanwhile Redis runs batch N
        while self._unapplied is not None:  # batch N: replies read, outputs produced
            if not self._apply(self._unapplied):
                loop.keep_alive(max(self._unapplied.retry_at - time.perf_counter(), 0.001))
                if loop.abandoned:  # revoked while Redis was retried: the next owner replays
                    raise Abandoned
        while self._marks_unrecorded():  # this batch's scripts must see earlier marks
            loop.keep_alive(0.001)
            if loop.abandoned:
                raise Abandoned
        self._send(batch)
        self._unapplied = batch
        self._waiting.append(batch)
        return batch

    def _marks_unrecorded(self) -> bool:
        """A batch applied with notifications whose marks are not recorded yet."""
        return any(
            b.result is not None and b.result.marks and not b.settled_flag for b in self._waiting
        )

    def _send(self, batch: _Batch) -> None:
        try:
            batch.sent_at = time.perf_counter()
            batch.sent = self._processor.send(batch.prepared)
        except REDIS_RETRYABLE as exc:  # sent again when its replies are due
            log.warning("sending a usage batch to Redis failed (%s); retrying", exc)
            batch.sent = None

    def _apply(self, batch: _Batch) -> bool:
        """Read the batch's replies (or run its scripts again after a failure), decide
        its outputs and produce them. False when Redis failed: tried again after a
        back-off (the scripts are idempotent: a replayed event is recognised, never
        counted twice)."""
        now = time.perf_counter()
        if now < batch.retry_at:
            return False
        try:
            if batch.sent is None:
                batch.sent_at = now
                batch.sent = self._processor.send(batch.prepared)
            replies, batch.sent = batch.sent.replies(), None
            REDIS_APPLY_USAGE.observe(time.perf_counter() - batch.sent_at)
            result = self._processor.finish(batch.prepared, replies)
        except REDIS_RETRYABLE as exc:
            batch.sent = None
            self._apply_retries.inc()
            delay = backoff_s(batch.attempt)
            batch.attempt += 1
            batch.retry_at = time.perf_counter() + delay
            log.warning("usage batch failed in Redis (%s); retrying in %.1f s", exc, delay)
            return False
        self._batch_seconds.observe(time.perf_counter() - batch.sent_at)
        batch.result = result
        batch.acks = self._publisher.produce(result.outputs)
        batch.produced_at = time.perf_counter()
        batch.attempt, batch.retry_at = 0, 0.0
        self._unapplied = None
        return True

    def forget(self) -> None:
        self._unapplied = None
        self._waiting.clear()

    def idle(self) -> None:
        """No next batch came to apply the last one: apply it now."""
        if self._unapplied is not None:
            self._apply(self._unapplied)

    def serve(self, timeout_s: float) -> None:
        """Delivery reports (waiting up to `timeout_s` for one); settle the batches the
        broker has, re-send failed ones."""
        self._publisher.poll(timeout_s if self._waiting else 0)
        now = time.perf_counter()
        for batch in self._waiting:
            if batch.acks is not None and batch.acks.done() and not batch.settled_flag:
                self._settle_or_resend(batch, now)
        while self._waiting and self._waiting[0].settled_flag:
            self._waiting.popleft()

    def _settle_or_resend(self, batch: _Batch, now: float) -> None:
        assert batch.result is not None and batch.acks is not None  # produced
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
            except REDIS_RETRYABLE as exc:  # tried again on the next turn
                log.warning("recording notification marks failed (%s); retrying", exc)
                return
        self._delivery_seconds.observe(now - batch.produced_at)
        record_worker_batch(USAGE, batch.result)
        batch.settled_flag = True


def usage_loop(settings: Settings, client: redis.Redis) -> BatchLoop:
    processor = UsageProcessor(
        client,
        settings.load_price_book(),
        settings.redis_prefix,
        settings.topics,
        balance_levels_nano_usd=settings.balance_levels_nano_usd,
        max_event_age_days=settings.max_event_age_days,
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
    # linger.ms 1 (not 5): a batch due notifications waits for their acks before the next
    # batch's scripts go to Redis, so at a low rate the linger is on the path from event to
    # block (bench: p50 24.5 → 12.8 ms at 5,000/s). Under a backlog a batch's thousands of
    # outputs fill the producer's batches without lingering.
    publisher = Publisher(settings.kafka_bootstrap, **{"linger.ms": 1})
    work = UsageWork(processor, publisher, client, settings.redis_prefix)
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
    client = sync_client_when_reachable(settings, stop)
    if client is not None:
        usage_loop(settings, client).run(stop)
