"""`BatchLoop`: consume a batch → hand it over → commit its offsets once it is settled.

The one loop of the project's confluent-kafka consumers: the usage hot path of
`metering worker` and the ClickHouse sink. Its whole crash-safety argument:

- a batch's offsets are committed only after its `Work` says it is settled — for the
  usage path: its Redis writes applied and every output acknowledged by the broker —
  and only after every earlier batch's (commits in batch order);
- nothing is committed otherwise (`enable.auto.commit` is off), so a crash at any point
  replays every batch not yet committed, and the work is idempotent (event ids, offsets
  stored with the state), so a replay changes nothing that was already done;
- on a rebalance (`on_revoke`) the batches in flight settle and are committed before the
  partitions go, or are abandoned uncommitted (the next owner replays them); a batch
  being handed over when its partitions are revoked is abandoned the same way.

Up to `max_in_flight` batches wait for their settlement while the next ones are
consumed and handed over; a batch's `Work` may also settle it before returning (e.g.
when later batches must see its effects). While the loop waits — a full window, or a
hand-over retrying Redis or Kafka — it serves the work (delivery reports); once it has
not consumed for `consume_gap_s` it pauses its partitions and calls `consume` again, so
the group keeps its member (`max.poll.interval.ms`) and rebalances are served; anything
such a call returns is rewound (`seek`) and read again later. (Not at once: pausing
drops the records the client has prefetched, which a short wait for acks would waste.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from threading import Event
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from metering.enforcement.records import SourceRecord, source_record

log = logging.getLogger("metering.batch_loop")

IDLE_POLL_S = 0.1  # nothing in flight: how long one consume call waits for a record
IN_FLIGHT_POLL_S = 0.002  # batches in flight: come back soon to settle them
KEEP_ALIVE_POLL_S = 0.05
CONSUME_GAP_S = 5.0  # waiting longer than this without consuming: pause and consume
LAG_REFRESH_S = 5.0
DRAIN_TIMEOUT_S = 15.0  # on revoke or stop: how long batches in flight may take to settle


class Abandoned(Exception):
    """The batch's partitions were revoked while it was being handed over."""


class Settlement(Protocol):
    def settled(self) -> bool:
        """True once the batch's work is done for good (polled by the loop)."""
        ...


class Work(Protocol):
    def handle(self, records: Sequence[SourceRecord], loop: BatchLoop) -> Settlement:
        """Take a batch on. Retries call `loop.keep_alive(seconds)` instead of sleeping,
        and give up with `Abandoned` when `loop.abandoned` says so."""
        ...

    def serve(self, timeout_s: float) -> None:
        """Called on every turn of the loop: delivery reports, re-sends. May block up to
        `timeout_s` for something to happen."""
        ...

    def idle(self) -> None:
        """No new batch came (or the loop drains): finish what a next batch's hand-over
        would have finished."""
        ...

    def forget(self) -> None:
        """The loop gave every batch in flight up (a rebalance): drop them."""
        ...


@dataclass(slots=True)
class _InFlight:
    commit: list[TopicPartition]  # per partition: the offset after the batch's last
    settlement: Settlement
    size: int


def _next_offsets(records: Sequence[SourceRecord]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for record in records:  # in offset order per partition, as consumed
        last[(record.topic, record.partition)] = record.offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]


class BatchLoop:
    def __init__(
        self,
        consumer: Consumer,
        topics: Sequence[str],
        work: Work,
        *,
        max_records: int = 5000,
        max_in_flight: int = 2,
        on_batch: Callable[[int], None] | None = None,
        on_lag: Callable[[int], None] | None = None,
        consume_gap_s: float = CONSUME_GAP_S,
        in_flight_poll_s: float = IN_FLIGHT_POLL_S,
    ) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._work = work
        self._max_records = max_records
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch  # told each batch's size as it is consumed (metrics)
        self._on_lag = on_lag  # told the lag every LAG_REFRESH_S (metrics)
        self._lag_reported = 0.0
        self._consume_gap_s = consume_gap_s
        # Batches in flight: how long a consume call waits before the loop looks at their
        # settlement again (short when settling is near: acks; longer for a linger).
        self._in_flight_poll_s = in_flight_poll_s
        self._last_consume = time.monotonic()
        self._in_flight: deque[_InFlight] = deque()
        self._paused: list[TopicPartition] = []
        self._handing_over = False
        self._async_commits = False
        self._committed: dict[tuple[str, int], int] = {}
        self.abandoned = False  # the batch being handed over lost its partitions
        self.draining = False  # settling everything in flight (revoke, stop, caught up)
        self.committed_batches = 0

    # -- the loop --------------------------------------------------------------------

    def run(self, stop: Event) -> None:
        """Until `stop` is set; then settle what is in flight, commit it, leave the group.
        On an error, everything in flight is given up uncommitted (the next owner
        replays it) before the consumer closes."""
        self.subscribe()
        try:
            while not stop.is_set():
                self.turn()
            self.drain()
        except BaseException:
            self.give_up()
            raise
        finally:
            self._consumer.close()  # leaves the group; commits nothing (auto-commit off)

    def subscribe(self) -> None:
        self._consumer.subscribe(self._topics, on_revoke=self._on_revoke)

    def give_up(self) -> None:
        """Drop every batch in flight, uncommitted: after an error, nothing more of them
        is trusted; their records are read again by whoever owns the partitions next."""
        if self._in_flight:
            self._in_flight.clear()
            self._work.forget()

    def committed(self) -> dict[tuple[str, int], int]:
        """The offsets this loop committed, per (topic, partition) it still owns."""
        return dict(self._committed)

    def turn(self) -> int:
        """One consume → hand over → settle step. Returns how many records it took."""
        records = self._take()
        if records:
            if self._on_batch is not None:
                self._on_batch(len(records))
            self._hand_over(records)
        else:
            self._work.idle()
        self._settle(wait=len(self._in_flight) > self._max_in_flight)
        if self._on_lag is not None and time.monotonic() - self._lag_reported > LAG_REFRESH_S:
            self._lag_reported = time.monotonic()
            self._on_lag(self.lag())
        return len(records)

    def lag(self) -> int:
        """Records on the assigned partitions not consumed yet: the high watermark of the
        last fetch minus the position, from the client's cached state (no request)."""
        lag = 0
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                if tp.offset < 0:  # nothing consumed yet: not known
                    continue
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    lag += max(high - tp.offset, 0)
        except KafkaException as exc:  # e.g. in a rebalance: known again later
            log.debug("consumer lag not known now (%s)", exc)
        return lag

    def _take(self) -> list[SourceRecord]:
        """The next batch: waits for one record (briefly while batches are in flight),
        then takes whatever else has arrived, up to `max_records`, without waiting —
        at a low rate a batch is one or a few records, under a backlog a full one."""
        self._resume()
        self._last_consume = time.monotonic()
        timeout = self._in_flight_poll_s if self._in_flight else IDLE_POLL_S
        messages = self._consumer.consume(num_messages=1, timeout=timeout)
        if messages:
            messages += self._consumer.consume(num_messages=self._max_records - 1, timeout=0)
        return [source_record(m) for m in messages if self._usable(m)]

    @staticmethod
    def _usable(message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            log.warning("%s; waiting for it", error.str())  # not created yet: wait
            return False
        if error.code() == KafkaError._PARTITION_EOF:
            return False
        raise KafkaException(error)

    def _hand_over(self, records: list[SourceRecord]) -> None:
        self.abandoned = False
        self._handing_over = True
        try:
            settlement = self._work.handle(records, self)
        except Abandoned:
            self._work.forget()
            log.warning(
                "a batch of %d was abandoned in a rebalance; its next owner replays it",
                len(records),
            )
            return
        finally:
            self._handing_over = False
        if self.abandoned:  # revoked while it was handed over: its offsets are not ours
            return
        self._in_flight.append(_InFlight(_next_offsets(records), settlement, len(records)))

    def _settle(self, *, wait: bool) -> None:
        """Commit the settled batches at the head of the window; with `wait`, until the
        window has room again."""
        while True:
            self._work.serve(0)
            while self._in_flight and self._in_flight[0].settlement.settled():
                self._commit(self._in_flight.popleft(), asynchronous=True)
            if not wait or len(self._in_flight) <= self._max_in_flight:
                return
            self.keep_alive(self._in_flight_poll_s)
            if not self._in_flight:  # a rebalance settled or abandoned them
                return

    def _commit(self, batch: _InFlight, *, asynchronous: bool) -> None:
        for tp in batch.commit:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        try:
            if asynchronous:
                self._consumer.commit(offsets=batch.commit, asynchronous=True)
            else:
                self._consumer.commit(offsets=batch.commit, asynchronous=False)
        except KafkaException as exc:
            # Only when the group no longer gives us the partitions: their next owner
            # replays the batch, which the work's idempotence makes harmless.
            log.warning("offset commit refused (%s); the batch will be replayed", exc)
        self.committed_batches += 1
        self._async_commits = asynchronous

    def _confirm_commits(self) -> None:
        """Commit the positions of everything committed asynchronously once more, and
        wait for it: before the partitions go or the consumer closes."""
        if not self._async_commits:
            return
        self._async_commits = False
        try:
            committed = self._last_committed()
            if committed:
                self._consumer.commit(offsets=committed, asynchronous=False)
        except KafkaException as exc:
            log.warning("final offset commit refused (%s); the next owner replays", exc)

    # -- waiting without leaving the group -------------------------------------------

    def keep_alive(self, seconds: float) -> None:
        """Wait `seconds`, serving the work, while staying in the group: past
        `consume_gap_s` without consuming, partitions paused and `consume` called (which
        also runs rebalance callbacks); anything it returns is rewound."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            if now - self._last_consume >= self._consume_gap_s:
                self._pause_all()
                self._last_consume = now
                self._rewind(self._consumer.consume(num_messages=1000, timeout=0))
            self._work.serve(min(left, KEEP_ALIVE_POLL_S))

    def _pause_all(self) -> None:
        """Pause every assigned partition (also those a rebalance just assigned)."""
        paused = set(self._paused)
        new = [tp for tp in self._consumer.assignment() if tp not in paused]
        if new:
            self._consumer.pause(new)
            self._paused += new

    def _rewind(self, messages: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                place = (message.topic() or "", message.partition() or 0)
                first.setdefault(place, message.offset() or 0)
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: the next owner reads it
                log.debug("rewind of %s[%d] not needed (%s)", topic, partition, exc)

    def _last_committed(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in sorted(self._committed.items())]

    def _resume(self) -> None:
        if self._paused:
            still_ours = set(self._consumer.assignment())
            paused = [tp for tp in self._paused if tp in still_ours]
            if paused:
                self._consumer.resume(paused)
            self._paused = []

    # -- rebalance and shutdown ------------------------------------------------------

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        """Before the partitions go: settle and commit what is in flight (or leave it to
        the next owner when it does not settle in time); a batch being handed over is
        abandoned."""
        self.drain()
        self._committed.clear()
        if self._handing_over:
            self.abandoned = True
        self._paused = []

    def drain(self) -> None:
        """Settle every batch in flight and commit them (synchronously confirmed), or give
        them up after DRAIN_TIMEOUT_S; the work sees `draining` meanwhile."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        self.draining = True
        try:
            while self._in_flight:
                self._work.idle()
                self._work.serve(IN_FLIGHT_POLL_S)
                head = self._in_flight[0]
                if head.settlement.settled():  # confirmed below, with one synchronous commit
                    self._commit(self._in_flight.popleft(), asynchronous=True)
                elif time.monotonic() > deadline:
                    log.warning(
                        "%d batches in flight did not settle in %.0f s; their next owner "
                        "replays them",
                        len(self._in_flight),
                        DRAIN_TIMEOUT_S,
                    )
                    self.give_up()
        finally:
            self.draining = False
        self._confirm_commits()
