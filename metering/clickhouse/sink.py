"""The ClickHouse sink stores what it reads, deciding nothing: `usage.priced.v1` →
`usage_events` (+ rollups by materialized views), `account.outcomes.v1` →
`account_events` (the ledger: each account event with the outcome the account processor
decided), `billing.documents.v1` → `documents` (what `billing run` issued and the seat
invoices the account processor issued), `billing.notification_deliveries.v1` →
`notification_deliveries` (the notifier's attempts).

Exactly once in query results, with at-least-once delivery:
- a batch is inserted first and its offsets are committed after; a crash in between
  replays the batch;
- the replay inserts nothing twice, because before every insert the sink asks ClickHouse
  which of the batch's event_ids are already stored and drops them (the same check drops
  the duplicates a restarted enforcement worker re-publishes). The rollup views see only
  inserted blocks, so this check — not ReplacingMergeTree's eventual merge — is what
  keeps them exact;
- it runs on `metering.batch_loop.BatchLoop`, like the usage hot path: the records
  consumed are held until the batch is stored, then the loop commits their offsets in
  order; on a rebalance the pending batch is stored inside the revoke callback (the
  loop drains), before the partitions can move, so two sinks never insert the same
  partition's records at once; waiting for ClickHouse keeps the group's membership;
- replayed account outcomes and delivery rows repeat their table's sorting key and
  collapse under FINAL (every reader of those tables uses it);
- a record ClickHouse cannot take (a value out of its column's range) is dead-lettered
  (`unstorable_record`) and the rest of its batch stored; any other ClickHouse or Kafka
  error is retried in place with back-off, never a reason to exit.

Batches close at `sink_batch_rows` records or `sink_batch_seconds`, whichever first
(one insert per table per batch, however many consume calls filled it).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from threading import Event
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError
from confluent_kafka import KafkaException, TopicPartition
from pydantic import ValidationError

from metering import faults, kafka_clients
from metering.batch_loop import BatchLoop
from metering.clickhouse.deliveries import DELIVERY_COLUMNS, BadDeliveryRecord, delivery_row
from metering.clickhouse.migrations import migrate
from metering.clickhouse.rows import (
    ACCOUNT_COLUMNS,
    USAGE_COLUMNS,
    BadOutcomeRecord,
    BadPricedRecord,
    outcome_row,
    usage_row,
)
from metering.clickhouse.store import Store, in_batches
from metering.documents.records import IssuedDocument
from metering.documents.store import store_new_documents
from metering.enforcement.publisher import Publisher
from metering.enforcement.records import OutputMessage, SourceRecord, dead_letter_message
from metering.metrics import (
    CONSUMER_LAG,
    SINK_BATCH_RETRIES,
    SINK_BATCHES,
    SINK_DEAD_LETTERS,
    SINK_DUPLICATES_SKIPPED,
    SINK_INSERT_SECONDS,
    SINK_ROWS_INSERTED,
)
from metering.retry import backoff_s
from metering.settings import Settings
from schemas.validation import Reason

log = logging.getLogger("metering.sink")

# Transient: the server or broker is unreachable. Retried in place.
RETRYABLE = (OSError, ConnectionError, KafkaException, OperationalError)
# A row the client (which encodes ClickHouse's Native format) or the server cannot take:
# a value out of its column's range or type. Only that record is dead-lettered.
UNSTORABLE = (DataError, ValueError, TypeError, OverflowError)
# Any other server error (a missing table, a read-only user, a quota) is not a record's
# fault: retried in place as well, logged as an error, until an operator fixes it.
SERVER_ERRORS = (DatabaseError,)
LAG_REFRESH_S = 5.0  # how often the consumer-lag gauge is recomputed (cached offsets only)
LINGER_POLL_S = 0.05  # a batch is being filled: how long one consume call waits


@dataclass
class SinkStats:
    batches: int = 0
    usage_rows: int = 0
    account_rows: int = 0
    document_rows: int = 0
    skipped_duplicates: int = 0
    dead_letters: int = 0
    last_flush_s: float = 0.0
    insert_seconds: list[float] = field(default_factory=list)


@dataclass
class _BatchRows:
    deadletter_topic: str
    usage: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    documents: list[IssuedDocument] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[OutputMessage] = field(default_factory=list)
    reject_reasons: list[str] = field(default_factory=list)  # of each reject, for metrics

    def reject(self, record: SourceRecord, reason: Reason, detail: str) -> None:
        self.rejects.append(
            dead_letter_message(self.deadletter_topic, record, reason.value, detail)
        )
        self.reject_reasons.append(reason.value)


class _Pending:
    """The records of the batch being filled: settled (for the loop, which then commits
    their offsets) once they are stored."""

    __slots__ = ("records", "started", "stored")

    def __init__(self) -> None:
        self.records: list[SourceRecord] = []
        self.started = time.monotonic()
        self.stored = False

    def settled(self) -> bool:
        return self.stored


class ClickHouseSink:
    """The sink's `Work` for a `BatchLoop` (`handle`, `serve`, `idle`, `forget`)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._topics = settings.topics
        self._publisher = Publisher(settings.kafka_bootstrap)
        self._consumer = kafka_clients.consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": settings.sink_group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                "max.poll.interval.ms": 300_000,
            }
        )
        self._loop = BatchLoop(
            self._consumer,
            self._inputs,
            self,
            max_records=settings.sink_batch_rows,
            # Every consume call's records wait in the batch being filled: the loop
            # never waits for room, and looks at the batch's age every LINGER_POLL_S.
            max_in_flight=1_000_000,
            in_flight_poll_s=LINGER_POLL_S,
        )
        self._pending: _Pending | None = None
        self._storing = False  # a store is under way (its retries serve the loop)
        self._lag_reported = 0.0
        self._lag_gauges = {
            topic: CONSUMER_LAG.labels(settings.sink_group_id, topic) for topic in self._inputs
        }
        self.stats = SinkStats()
        migrate(store)

    @property
    def _inputs(self) -> tuple[str, ...]:
        return self._settings.sink_inputs()

    # -- running ---------------------------------------------------------------------

    def run(self, stop: Event) -> None:
        """Consume until `stop` is set; then store what is pending and leave the group."""
        self._loop.run(stop)

    def run_until_caught_up(self, timeout_s: float = 60.0) -> None:
        """Consume and store until everything on the input topics is stored and
        committed (for tests, the demo and `metering sink --once`)."""
        self._loop.subscribe()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._loop.turn() == 0:  # idle: store what is pending, then check
                    self._loop.drain()
                    if self._caught_up():
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError("the ClickHouse sink did not catch up in time")
        except BaseException:
            self._loop.give_up()
            raise
        finally:
            self._consumer.close()

    # -- the loop's work -------------------------------------------------------------

    def handle(self, records: Sequence[SourceRecord], loop: BatchLoop) -> _Pending:
        """Add a consumed batch to the batch being filled; store it once it is full."""
        pending = self._pending
        if pending is None:
            pending = self._pending = _Pending()
        pending.records += records
        if len(pending.records) >= self._settings.sink_batch_rows:
            self._store_pending()
        return pending

    def serve(self, timeout_s: float) -> None:
        """Store the pending batch once it is `sink_batch_seconds` old; the lag gauge."""
        pending = self._pending
        if (
            pending is not None
            and not self._storing
            and time.monotonic() - pending.started >= self._settings.sink_batch_seconds
        ):
            self._store_pending()
        elif timeout_s > 0:
            time.sleep(timeout_s)  # nothing to wait for but time
        if time.monotonic() - self._lag_reported >= LAG_REFRESH_S:
            self._report_lag()

    def idle(self) -> None:
        """Nothing new came: when the loop drains (a rebalance, stopping, or caught up),
        store what is pending now rather than when it is old enough."""
        if self._loop.draining:
            self._store_pending()

    def forget(self) -> None:
        """The loop gave the pending batch up (a rebalance it could not wait for, or an
        error): it is read again by the partitions' next owner, and whatever of it was
        stored is recognised then by the stored-id checks."""
        self._pending = None

    def _store_pending(self) -> None:
        """Store the pending batch (retried until it succeeds: safe to repeat), then let
        the loop commit it. Not re-entered from the loop its retries serve."""
        pending = self._pending
        if pending is None or self._storing:
            return
        self._storing = True
        try:
            if not self._store_batch(pending):
                return  # given up meanwhile (see `forget`)
        finally:
            self._storing = False
        self.stats.batches += 1
        faults.reached(faults.Point.SINK_BATCH_STORED)  # stored, not committed: crash tests
        pending.stored = True
        self._pending = None
        SINK_BATCHES.inc()

    def _store_batch(self, pending: _Pending) -> bool:
        """Convert the batch's records to rows and store them. A row ClickHouse cannot
        take sends the batch down the record-by-record path. False if the loop gave the
        batch up while a failure was retried."""
        batch = pending.records
        rows = self._rows(batch)
        attempt = 0
        while True:
            try:
                try:
                    self._store_rows(rows)
                except UNSTORABLE as exc:
                    log.warning(
                        "a row of a batch of %d was refused (%s); storing it record by record",
                        len(batch),
                        exc,
                    )
                    self._store_one_by_one(batch)
                return True
            except (*RETRYABLE, *SERVER_ERRORS) as exc:
                delay = backoff_s(attempt)
                level = logging.WARNING if isinstance(exc, RETRYABLE) else logging.ERROR
                log.log(
                    level, "sink batch of %d failed (%s); retry in %.1f s", len(batch), exc, delay
                )
                SINK_BATCH_RETRIES.inc()
                attempt += 1
                self._loop.keep_alive(delay)  # the group keeps its member meanwhile
                if self._pending is not pending:
                    return False

    def _store_one_by_one(self, batch: Sequence[SourceRecord]) -> None:
        """Each record with its own insert: one that ClickHouse refuses is dead-lettered
        (`unstorable_record`); the others are stored. Records of the batch stored before
        are found by the stored-id checks (or collapse under FINAL), not stored twice."""
        for record in batch:
            try:
                self._store_rows(self._rows([record]))
            except UNSTORABLE as exc:
                refused = _BatchRows(self._topics.usage_deadletter)
                refused.reject(
                    record, Reason.UNSTORABLE_RECORD, f"ClickHouse refused its row: {exc}"[:1000]
                )
                self._store_rows(refused)

    # -- one batch -------------------------------------------------------------------

    def _rows(self, batch: Sequence[SourceRecord]) -> _BatchRows:
        rows = _BatchRows(self._topics.usage_deadletter)
        for record in batch:
            if record.topic == self._topics.usage_priced:
                try:
                    rows.usage.append(usage_row(record))
                except BadPricedRecord as exc:
                    rows.reject(record, Reason.INVALID_PRICED_RECORD, str(exc))
            elif record.topic == self._topics.account_outcomes:
                try:
                    rows.accounts.append(outcome_row(record))
                except BadOutcomeRecord as exc:
                    rows.reject(record, Reason.INVALID_OUTCOME_RECORD, str(exc))
            elif record.topic == self._topics.notification_deliveries:
                try:
                    rows.deliveries.append(delivery_row(record))
                except BadDeliveryRecord as exc:
                    rows.reject(record, Reason.INVALID_DELIVERY_RECORD, str(exc))
            else:
                try:
                    rows.documents.append(IssuedDocument.from_record(record.value or b""))
                except ValidationError as exc:
                    rows.reject(record, Reason.INVALID_DOCUMENT_RECORD, str(exc).splitlines()[0])
        return rows

    def _store_rows(self, rows: _BatchRows) -> None:
        started = time.perf_counter()
        fresh = self._new_usage_rows(rows.usage)
        self._store.insert("usage_events", fresh, USAGE_COLUMNS)
        self._store.insert("account_events", rows.accounts, ACCOUNT_COLUMNS)
        documents = store_new_documents(self._store, rows.documents)
        # Replayed delivery rows repeat their sorting key and collapse under FINAL.
        self._store.insert("notification_deliveries", rows.deliveries, DELIVERY_COLUMNS)
        if rows.rejects:
            self._publisher.publish_blocking(rows.rejects)
        elapsed = time.perf_counter() - started
        self.stats.usage_rows += len(fresh)
        self.stats.skipped_duplicates += len(rows.usage) - len(fresh)
        self.stats.account_rows += len(rows.accounts)
        self.stats.document_rows += documents
        self.stats.dead_letters += len(rows.rejects)
        self.stats.last_flush_s = elapsed
        self.stats.insert_seconds.append(elapsed)
        SINK_INSERT_SECONDS.observe(elapsed)
        for table, count in (
            ("usage_events", len(fresh)),
            ("account_events", len(rows.accounts)),
            ("documents", documents),
            ("notification_deliveries", len(rows.deliveries)),
        ):
            if count:
                SINK_ROWS_INSERTED.labels(table).inc(count)
        if len(rows.usage) > len(fresh):
            SINK_DUPLICATES_SKIPPED.inc(len(rows.usage) - len(fresh))
        for reason in rows.reject_reasons:
            SINK_DEAD_LETTERS.labels(reason).inc()

    def _new_usage_rows(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Drop rows whose (org_id, event_id) is stored already or repeats in the batch."""
        if not rows:
            return rows
        orgs_of: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            orgs_of[row[0]].add(row[1])
        stored: set[tuple[str, str]] = set()
        for ids in in_batches(sorted(orgs_of)):
            stored.update(
                (org, event_id)
                for org, event_id in self._store.rows(
                    f"SELECT org_id, event_id FROM {self._store.table('usage_events')} "
                    "WHERE org_id IN %(orgs)s AND event_id IN %(ids)s",
                    {"orgs": sorted(set().union(*(orgs_of[i] for i in ids))), "ids": ids},
                )
            )
        fresh = []
        for row in rows:
            identity = (row[1], row[0])
            if identity not in stored:
                stored.add(identity)
                fresh.append(row)
        return fresh

    def _report_lag(self) -> None:
        """The consumer-lag gauge: per input topic, over the partitions assigned to this
        sink, the high watermark minus the offset this sink last committed (records not
        yet stored; before its first commit of a partition, its read position), from
        the client's cached state and our own commits (no request)."""
        self._lag_reported = time.monotonic()
        lag = dict.fromkeys(self._inputs, 0)
        committed = self._loop.committed()
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                done = committed.get((tp.topic, tp.partition), tp.offset)
                if done < 0:  # nothing read or committed yet: unknown
                    continue
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    lag[tp.topic] += max(high - done, 0)
        except KafkaException as exc:  # e.g. in a rebalance: try again later
            log.debug("consumer lag not known now (%s)", exc)
            return
        for topic, value in lag.items():
            self._lag_gauges[topic].set(value)

    def _caught_up(self) -> bool:
        """Every partition of the input topics committed up to its end, nothing pending.
        All partitions, not only ours: right after a sink was killed its partitions stay
        with the dead member until the session times out, and are only then ours."""
        if self._pending is not None or not self._consumer.assignment():
            return False
        metadata = self._consumer.list_topics(timeout=10).topics
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._inputs
            for partition in metadata[topic].partitions
        ]
        for tp in self._consumer.committed(partitions, timeout=10):
            _low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            if max(tp.offset, 0) < high:
                return False
        return True


def open_sink(settings: Settings) -> tuple[ClickHouseSink, Store]:
    store = Store(settings.resolved_clickhouse_url)
    return ClickHouseSink(settings, store), store


def run_sink(settings: Settings, stop: Event, on_ready: Callable[[], None] | None = None) -> None:
    sink, store = open_sink(settings)
    try:
        if on_ready:
            on_ready()
        sink.run(stop)
    finally:
        store.close()
