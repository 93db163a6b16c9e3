"""`metering worker`: the processors that keep Redis — and so the gate — current.

Two loops in one process:

- **usage** (`metering.usage_path`, a thread): usage.events.v1 in batches of up to
  thousands through confluent-kafka's `BatchLoop` — the hot path. A batch's offsets are
  committed only after its Redis writes are applied and the broker has acknowledged its
  outputs, in batch order; see `metering.batch_loop` for why a crash (even SIGKILL) can
  neither lose nor double an event.
- **account** (faust-streaming, the main thread): account.events.v1, low volume, plus
  the timers — the new month's resumes, contract renewals, the lag gauges. The agent
  handles each `take_events` batch completely (apply, publish, await the broker's
  acknowledgement, record notification marks) before it asks for the next, and faust
  acknowledges a batch's events only when the next is asked for: so an offset is
  committed only after its batch is durable. A failure that is not a retryable Redis or
  Kafka error stops the process at once (`os._exit`): leaving the agent with an
  exception would let faust go on past the batch.

Every Redis write is idempotent on its own (see `metering.enforcement`): a replayed
batch changes nothing already applied. We do not rely on faust's exactly-once mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import traceback
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from time import perf_counter
from typing import Any, NoReturn, Protocol

import faust
from confluent_kafka import KafkaException
from redis.asyncio import Redis

from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.notify import record_marks, resume_past_months
from metering.enforcement.publisher import Publisher, PublishFailed
from metering.enforcement.records import SourceRecord, month_of
from metering.enforcement.renewals import due_renewals
from metering.metrics import (
    ACCOUNT,
    CONSUMER_LAG,
    NEW_MONTH,
    WORKER_BATCH_RETRIES,
    WORKER_BATCH_SECONDS,
    WORKER_BATCH_SIZE,
    WORKER_DELIVERY_SECONDS,
    WORKER_EVENTS_CONSUMED,
    record_worker_batch,
    serve,
)
from metering.redis_clients import REDIS_RETRYABLE, async_client
from metering.retry import RETRY_BACKOFF_S, backoff_s
from metering.settings import Settings
from metering.topics import wait_for_topics
from metering.usage_path import run_usage_path

log = logging.getLogger("metering.worker")

# faust hands the account agent up to BATCH_SIZE records at once, or what came in
# BATCH_WINDOW_S.
BATCH_SIZE = 2000
BATCH_WINDOW_S = 0.035
EXIT_UNEXPECTED = 70
USAGE_STOP_TIMEOUT_S = 30.0  # on shutdown: the usage loop settles what is in flight
NEW_MONTH_CHECK_S = 60.0
LAG_REFRESH_S = 5.0  # how often the consumer-lag gauge is recomputed (no I/O: cached offsets)
RETRYABLE: tuple[type[Exception], ...] = (*REDIS_RETRYABLE, KafkaException, PublishFailed)


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
    delay = backoff_s(attempt)
    log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
    await asyncio.sleep(delay)


async def process_batch(
    processor: Processor, records: Sequence[SourceRecord], name: str = ACCOUNT
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
    name: str = ACCOUNT,
) -> None:
    """Until the broker has every output of `result` (re-sent after a failure: consumers
    de-duplicate), then record its notification marks — retried until it succeeds."""
    attempt = 0
    while True:
        try:
            await publisher.publish(result.outputs)
            await record_marks(client, prefix, result.marks)
            return
        except RETRYABLE as exc:
            WORKER_BATCH_RETRIES.labels(name, "publish").inc()
            await _backoff(attempt, f"publishing {len(result.outputs)} outputs", exc)
            attempt += 1
        except Exception:
            _exit_unexpected()


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


def add_account_processor(
    app: faust.App, settings: Settings, client: Redis, publisher: Publisher
) -> None:
    """The account agent and its lag gauge."""
    topics = settings.topics
    book = settings.load_price_book()
    accounts = AccountProcessor(client, book, settings.redis_prefix, topics)
    consumed = WORKER_EVENTS_CONSUMED.labels(ACCOUNT)
    batch_size = WORKER_BATCH_SIZE.labels(ACCOUNT)
    batch_seconds = WORKER_BATCH_SECONDS.labels(ACCOUNT)
    delivery_seconds = WORKER_DELIVERY_SECONDS.labels(ACCOUNT)
    next_offsets: dict[Any, int] = {}  # per partition: after the last record taken

    # faust ships no type information for streams.
    @app.agent(raw_topic(app, topics.account_events), name="account-processor")
    async def account_agent(stream: Any) -> AsyncIterator[None]:
        """Each batch is durable before the next is asked for (see the module doc)."""
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WINDOW_S):
            consumed.inc(len(events))
            batch_size.observe(len(events))
            started = perf_counter()
            result = await process_batch(accounts, [_record(e) for e in events])
            batch_seconds.observe(perf_counter() - started)
            started = perf_counter()
            await deliver_and_record(publisher, client, result, prefix=settings.redis_prefix)
            delivery_seconds.observe(perf_counter() - started)
            record_worker_batch(ACCOUNT, result)
            for event in events:
                next_offsets[event.message.tp] = event.message.offset + 1
            yield None

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types it narrowly
    async def forget_revoked(_app: Any, *args: Any, **_: Any) -> None:
        """Sent with the set of revoked partitions: their positions are no longer ours."""
        for tp in args[0]:
            next_offsets.pop(tp, None)

    account_lag = CONSUMER_LAG.labels(settings.group_id, topics.account_events)

    @app.timer(interval=LAG_REFRESH_S)  # type: ignore[untyped-decorator]  # faust is untyped
    async def report_lag() -> None:
        """The account processor's lag: high watermark of the last fetch minus what was
        handled, from the consumer's cached state (no round trip). A partition nothing
        was taken from since it was assigned is left out (its position is not known)."""
        lag = 0
        try:
            for tp, position in list(next_offsets.items()):
                high = app.consumer.highwater(tp)
                if high:
                    lag += max(high - position, 0)
        except Exception as exc:  # e.g. the consumer is restarting: try again later
            log.debug("account consumer lag not known now (%s)", exc)
            return
        account_lag.set(lag)


def create_app(settings: Settings) -> faust.App:
    app = faust_app(settings)
    client = async_client(settings)
    publisher = Publisher(settings.kafka_bootstrap)
    topics = settings.topics
    add_account_processor(app, settings, client, publisher)

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
    usage = UsageThread(settings)
    try:
        app = create_app(settings)
        usage.start()
        Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        usage.stop()
        if sink is not None:
            stop_child(sink)
        if usage.failed:
            raise SystemExit(EXIT_UNEXPECTED)


class UsageThread:
    """The usage hot path beside faust. If it fails (anything but the Redis and Kafka
    errors it retries), the whole worker stops: SIGTERM to this process, so faust shuts
    down gracefully too, and the exit code says so. Its batch is not committed."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-path", daemon=True)
        self.failed = False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            run_usage_path(self._settings, self._stop)
        except BaseException:
            self.failed = True
            log.critical("the usage path failed; stopping the worker", exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        """Settle and commit what is in flight, then leave the group."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(USAGE_STOP_TIMEOUT_S)
