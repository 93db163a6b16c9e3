"""`metering worker`: the faust-streaming app that runs the account and usage processors.

Each agent takes its topic in batches (`take_events`: up to BATCH_SIZE records or what
came in BATCH_WINDOW_S) and hands them to a `BatchPipeline`, which returns at once, so
faust fills the next batch meanwhile. The pipeline's applier then, batch after batch:

1. gathers what was taken — at once, unless a backlog waits in faust already, when it
   takes more in first (up to APPLY_TARGET records or GATHER_MAX_S): per record, a big
   batch costs less (one Lua script per org and partition, whatever its size);
2. applies it: the processor runs its Lua scripts (one pipelined round trip) and decides
   the outputs, which are handed to the producer at once. One batch after the other, so
   Redis sees each partition's records in offset order;
3. completes it, in a task of its own: waits for the broker to acknowledge the outputs
   (acks=all), records the notification marks, then — after the previous batch —
   acknowledges its input to faust. Offsets are committed from acknowledgements only.

Step 3 of a batch overlaps steps 1–2 of the next ones (at most MAX_IN_FLIGHT batches wait
for their acks). A batch due notifications completes before the next one is applied,
so the next scripts see its marks and nothing is notified twice.

Faust acknowledges a batch's events itself when the agent asks `take_events` for the
next batch; so each event's message carries one extra reference, taken as the agent
receives it and released by step 3, and faust's final acknowledgement comes from
whichever release is last. Hence an offset is committed only after its batch's Redis
writes are applied and its outputs are durable, and after every earlier batch's: a crash
(even SIGKILL) loses no output of a committed offset; uncommitted batches are replayed,
and every Redis write is idempotent on its own (see `metering.enforcement`). A rebalance
waits (faust's `wait_empty`) until the events taken are acknowledged: the applier gets
to them within GATHER_MAX_S even when no more input comes. We do not rely on faust's
exactly-once mode.

A batch is never given up: Redis or Kafka errors are retried with back-off. Anything
unexpected stops the process at once (`os._exit`), because leaving the agent's loop with
an exception would let faust acknowledge the batch as if it had been handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import traceback
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from time import perf_counter
from typing import Any, NoReturn, Protocol

import faust
from confluent_kafka import KafkaException
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.notify import record_marks, resume_past_months
from metering.enforcement.publisher import Delivery, Publisher, PublishFailed
from metering.enforcement.records import SourceRecord, month_of
from metering.enforcement.renewals import due_renewals
from metering.enforcement.usage_processor import UsageProcessor
from metering.metrics import (
    ACCOUNT,
    CONSUMER_LAG,
    NEW_MONTH,
    USAGE,
    WORKER_BATCH_RETRIES,
    WORKER_BATCH_SECONDS,
    WORKER_BATCH_SIZE,
    WORKER_DELIVERY_SECONDS,
    WORKER_EVENTS_CONSUMED,
    record_worker_batch,
    serve,
)
from metering.settings import Settings
from metering.topics import wait_for_topics

log = logging.getLogger("metering.worker")

# faust hands the agent up to BATCH_SIZE records at once, or what came in BATCH_WINDOW_S.
BATCH_SIZE = 2000
BATCH_WINDOW_S = 0.035
# What is taken is applied at once, unless GATHER_MIN_WAITING more records wait in faust
# already (a backlog): then more is taken in first, up to APPLY_TARGET records or for
# GATHER_MAX_S, as bigger batches cost less per record (fewer scripts per record).
# At most MAX_PENDING records wait to be applied (back-pressure).
APPLY_TARGET = 2000
APPLY_MAX = 4000
GATHER_MIN_WAITING = 200
GATHER_MAX_S = 0.1
MAX_PENDING = 4000
MAX_IN_FLIGHT = 2  # batches per agent applied but not yet acknowledged by the broker
DRAIN_TIMEOUT_S = 10.0  # on shutdown, how long in-flight batches may take to complete
RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
EXIT_UNEXPECTED = 70
NEW_MONTH_CHECK_S = 60.0
LAG_REFRESH_S = 5.0  # how often the consumer-lag gauge is recomputed (no I/O: cached offsets)
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


def _exit_unexpected() -> NoReturn:
    traceback.print_exc()
    log.critical("unexpected error; exiting so the batch is not acknowledged")
    os._exit(EXIT_UNEXPECTED)


async def _backoff(attempt: int, what: str, exc: BaseException) -> None:
    delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
    log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
    await asyncio.sleep(delay)


async def process_batch(
    processor: Processor, records: Sequence[SourceRecord], name: str = USAGE
) -> BatchResult:
    """Apply a batch to Redis and decide its outputs — retried until it succeeds (the
    scripts are idempotent: a replayed record is recognised, never counted twice)."""
    attempt = 0
    while True:
        try:
            return await processor.process(records)
        except RETRYABLE as exc:
            WORKER_BATCH_RETRIES.labels(name, "apply").inc()
            await _backoff(attempt, f"batch of {len(records)}", exc)
            attempt += 1
        except Exception:
            _exit_unexpected()


async def deliver_and_record(
    publisher: Publisher,
    client: Redis,
    result: BatchResult,
    *,
    prefix: str,
    delivery: Delivery | None = None,
    name: str = USAGE,
) -> None:
    """Until the broker has every output of `result` (re-sent after a failure: consumers
    de-duplicate), then record its notification marks — retried until it succeeds."""
    attempt = 0
    while True:
        try:
            if delivery is None:
                delivery = await publisher.send(result.outputs)
            await delivery
            await record_marks(client, prefix, result.marks)
            return
        except RETRYABLE as exc:
            delivery = None
            WORKER_BATCH_RETRIES.labels(name, "publish").inc()
            await _backoff(attempt, f"publishing {len(result.outputs)} outputs", exc)
            attempt += 1
        except Exception:
            _exit_unexpected()


class BatchPipeline:
    """One agent's batches through the steps described in the module docstring."""

    def __init__(
        self,
        stream: Any,
        processor: Processor,
        publisher: Publisher,
        client: Redis,
        *,
        prefix: str,
        name: str = USAGE,
    ) -> None:
        self._stream = stream
        self._prefix = prefix
        self._processor = processor
        self._publisher = publisher
        self._client = client
        self.name = name  # the processor's name in the metrics: usage or account
        self._consumed = WORKER_EVENTS_CONSUMED.labels(name)
        self._batch_size = WORKER_BATCH_SIZE.labels(name)
        self._batch_seconds = WORKER_BATCH_SECONDS.labels(name)
        self._delivery_seconds = WORKER_DELIVERY_SECONDS.labels(name)
        self._pending: list[Any] = []  # taken from faust (and held), not yet applied
        self._pending_since = 0.0  # when the oldest pending event was taken
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._in_flight: deque[asyncio.Task[None]] = deque()  # completions, in batch order
        self._next_offsets: dict[Any, int] = {}  # per partition: after the last one taken

    async def take(self, events: Sequence[Any]) -> None:
        """Hold a `take_events` batch and queue it for the applier. Returns at once (so
        faust fills the next batch meanwhile) unless MAX_PENDING events wait already."""
        next_offsets = self._next_offsets
        for event in events:
            message = event.message
            message.incref()  # released in `_complete`, once the batch is durable
            next_offsets[message.tp] = message.offset + 1
        self._consumed.inc(len(events))
        if not self._pending:
            self._pending_since = asyncio.get_running_loop().time()
        self._pending.extend(events)
        self._arrived.set()
        if self._applier is None:
            self._applier = asyncio.create_task(self._apply_forever())
        while len(self._pending) >= MAX_PENDING:
            self._room.clear()
            await self._room.wait()

    def _waiting_input(self) -> int:
        """Records in the partitions we read that faust has not handed over yet (to the
        high watermark of the last fetch): the backlog."""
        consumer = self._stream.app.consumer
        waiting = 0
        for tp, next_offset in self._next_offsets.items():
            try:
                high = consumer.highwater(tp)
            except Exception:  # e.g. a partition no longer assigned: only a heuristic
                continue
            if high:
                waiting += max(high - next_offset, 0)
        return waiting

    def forget(self, partitions: Any) -> None:
        """Partitions revoked in a rebalance: their positions are no longer ours (if one
        comes back, its position is known again from the first record taken)."""
        for tp in partitions:
            self._next_offsets.pop(tp, None)

    def lag(self, topic: str) -> int:
        """Records of `topic` on the partitions assigned to this process that the agent
        has not taken yet: high watermark (of the last fetch) minus position, from the
        consumer's cached state — no I/O. A partition nothing was taken from since it
        was assigned is left out (its position is not known here)."""
        consumer = self._stream.app.consumer
        lag = 0
        for tp in consumer.assignment():
            if tp.topic != topic or tp not in self._next_offsets:
                continue
            high = consumer.highwater(tp)
            if high:
                lag += max(high - self._next_offsets[tp], 0)
        return lag

    async def _gather(self) -> list[Any]:
        """The next batch to apply: what is pending — after taking in more while at least
        GATHER_MIN_WAITING records wait in faust already (a backlog: bigger batches cost
        less per record), up to APPLY_TARGET records or GATHER_MAX_S; at once otherwise
        (waiting for input still to come would only add latency)."""
        loop = asyncio.get_running_loop()
        while True:
            timeout = None
            if self._pending:
                timeout = self._pending_since + GATHER_MAX_S - loop.time()
                if (
                    len(self._pending) >= APPLY_TARGET
                    or timeout <= 0
                    or self._waiting_input() < GATHER_MIN_WAITING
                ):
                    break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        events, self._pending = self._pending[:APPLY_MAX], self._pending[APPLY_MAX:]
        self._room.set()
        return events

    async def _apply_forever(self) -> None:
        try:
            while True:
                events = await self._gather()
                started = perf_counter()
                records = [_record(e) for e in events]
                result = await process_batch(self._processor, records, self.name)
                self._batch_seconds.observe(perf_counter() - started)
                self._batch_size.observe(len(events))
                delivery = await self._publisher.send(result.outputs)  # in batch order
                previous = self._in_flight[-1] if self._in_flight else None
                task = asyncio.create_task(self._complete(events, result, delivery, previous))
                self._in_flight.append(task)
                if result.marks:
                    await asyncio.shield(task)  # the next batch's scripts must see the marks
                while self._in_flight and (
                    self._in_flight[0].done() or len(self._in_flight) > MAX_IN_FLIGHT
                ):
                    await asyncio.shield(self._in_flight.popleft())
        except asyncio.CancelledError:
            raise
        except Exception:
            _exit_unexpected()

    async def _complete(
        self,
        events: Sequence[Any],
        result: BatchResult,
        delivery: Delivery,
        previous: asyncio.Task[None] | None,
    ) -> None:
        started = perf_counter()
        await deliver_and_record(
            self._publisher,
            self._client,
            result,
            prefix=self._prefix,
            delivery=delivery,
            name=self.name,
        )
        self._delivery_seconds.observe(perf_counter() - started)
        record_worker_batch(self.name, result)
        if previous is not None:
            await previous  # acknowledgements in batch order
        try:
            for event in events:
                await self._stream.ack(event)
        except Exception:
            _exit_unexpected()

    async def drain(self) -> None:
        """Shutdown: apply nothing more; let the batches in flight complete (fewer
        replays). Whatever is not acknowledged is replayed by the next owner."""
        if self._applier is not None:
            self._applier.cancel()
        pending = [task for task in self._in_flight if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)


def faust_app(settings: Settings) -> faust.App:
    """The faust app the processors run in (also the benchmark's faust-alone floor)."""
    # faust creates a local data folder per app (`<group>-data/`, empty with the memory
    # store), by default in the working directory. It is local data like the stack's:
    # under METERING_VAR_DIR. faust creates the folder itself, but not its parents.
    faust_dir = settings.var_dir / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.group_id,
        datadir=faust_dir / f"{settings.group_id}-data",
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


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic read as bytes: the processors parse and validate records themselves."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def create_app(settings: Settings) -> faust.App:
    app = faust_app(settings)
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

    pipelines: dict[str, BatchPipeline] = {}  # input topic → its agent's pipeline

    # faust ships no type information for streams.
    async def run(stream: Any, processor: Processor, name: str, topic: str) -> AsyncIterator[None]:
        pipeline = pipelines[topic] = BatchPipeline(
            stream, processor, publisher, client, prefix=settings.redis_prefix, name=name
        )
        try:
            async for events in stream.take_events(BATCH_SIZE, within=BATCH_WINDOW_S):
                await pipeline.take(events)
                yield None
        finally:
            await pipeline.drain()

    @app.agent(raw_topic(app, topics.account_events), name="account-processor")
    async def account_agent(stream: Any) -> AsyncIterator[None]:
        async for _ in run(stream, accounts, ACCOUNT, topics.account_events):
            yield None

    @app.agent(raw_topic(app, topics.usage_events), name="usage-processor")
    async def usage_agent(stream: Any) -> AsyncIterator[None]:
        async for _ in run(stream, usage, USAGE, topics.usage_events):
            yield None

    lag_gauges = {
        topic: CONSUMER_LAG.labels(settings.group_id, topic)
        for topic in (topics.usage_events, topics.account_events)
    }

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types it narrowly
    async def forget_revoked(_app: Any, *args: Any, **_: Any) -> None:
        """Sent with the set of revoked partitions."""
        for pipeline in pipelines.values():
            pipeline.forget(args[0])

    @app.timer(interval=LAG_REFRESH_S)  # type: ignore[untyped-decorator]  # faust is untyped
    async def report_lag() -> None:
        """The consumer-lag gauge, from offsets the consumer has cached (no round trip)."""
        for topic, gauge in lag_gauges.items():
            pipeline = pipelines.get(topic)
            try:
                gauge.set(pipeline.lag(topic) if pipeline is not None else 0)
            except Exception as exc:  # e.g. the consumer is restarting: try again later
                log.debug("consumer lag of %s not known now (%s)", topic, exc)

    @app.timer(interval=NEW_MONTH_CHECK_S)  # type: ignore[untyped-decorator]  # faust is untyped
    async def new_month() -> None:
        """Announce the blocks a new month lifted. Idempotent: a mark is removed only
        after its notification is published, and every worker may run it."""
        month = month_of(datetime.now(UTC))
        while True:
            try:
                result = await resume_past_months(client, settings.redis_prefix, topics, month)
                await publisher.publish(result.outputs)
                await record_marks(client, settings.redis_prefix, result.marks)
                record_worker_batch(NEW_MONTH, result)
                return
            except RETRYABLE as exc:
                WORKER_BATCH_RETRIES.labels(NEW_MONTH, "publish").inc()
                log.warning("new-month job failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_BACKOFF_S[-1])

    if settings.renewal_check_seconds:

        @app.timer(interval=settings.renewal_check_seconds)  # type: ignore[untyped-decorator]
        async def renew_contracts() -> None:
            await append_renewals(client, publisher, settings)

    return app


async def append_renewals(client: Redis, publisher: Publisher, settings: Settings) -> None:
    """Append the renewals of the terms that have ended (each worker may: a renewal's
    id is derived from its term, so a repeat is a duplicate)."""
    attempt = 0
    while True:
        try:
            today = datetime.now(UTC).date()
            renewals = await due_renewals(client, settings.redis_prefix, settings.topics, today)
            await publisher.publish(renewals)
            return
        except RETRYABLE as exc:
            await _backoff(attempt, "the renewal check", exc)
            attempt += 1


def sink_metrics_port(settings: Settings) -> int:
    """Where the sink child of `metering worker` serves its metrics: the port after the
    worker's (0 if metrics are off)."""
    return settings.metrics_port + 1 if settings.metrics_port else 0


def wait_for_kafka(settings: Settings) -> bool:
    """Until the broker answers and the topics the processors read and write exist (see
    `wait_for_topics`); False if SIGTERM/SIGINT came first."""
    stop = threading.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = [signal.signal(sig, lambda *_: stop.set()) for sig in signals]
    topics = settings.topics
    names = [
        topics.account_events,
        topics.usage_events,
        topics.usage_priced,
        topics.usage_deadletter,
        topics.notifications,
        topics.documents,
        topics.notification_marks,
    ]
    try:
        return wait_for_topics(settings.kafka_bootstrap, names, stop, log)
    finally:
        for sig, handler in zip(signals, previous, strict=True):
            signal.signal(sig, handler)


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run until SIGTERM/SIGINT (graceful: acknowledged offsets are committed). Started
    before Kafka or its topics, it waits for them first."""
    from faust.worker import Worker  # noqa: PLC0415 - only needed when running

    from metering.clickhouse.service import spawn_sink_child  # noqa: PLC0415
    from metering.stack.process import stop_child  # noqa: PLC0415

    log.setLevel(loglevel.upper())  # as faust's own logs, also while waiting for Kafka
    if not wait_for_kafka(settings):
        return
    # The ClickHouse sink runs beside the processors in a child process of its own (its
    # own consumer group, its own core); it dies with this process.
    sink = spawn_sink_child(sink_metrics_port(settings)) if settings.sink_in_worker else None
    # Metrics on METERING_METRICS_PORT (after the fork: the server is a thread); the sink
    # child serves its own on the next port (docs/decisions.md › Metrics).
    serve(settings.metrics_port, "metering worker", settings.metrics_host)
    try:
        app = create_app(settings)
        Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        if sink is not None:
            stop_child(sink)
