"""`BatchLoop` against the real broker: offsets are committed only for settled batches and
in batch order; an unsettled batch is replayed by the group's next consumer; waiting in
`keep_alive` neither skips nor repeats a record."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from threading import Event
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from metering.batch_loop import BatchLoop
from metering.enforcement.records import SourceRecord
from tests.conftest import RunningStack

pytestmark = pytest.mark.stack


class _Settlement:
    def __init__(self) -> None:
        self.done = False

    def settled(self) -> bool:
        return self.done


class _Work:
    """Records every batch; settles them only when the test says so."""

    def __init__(self, on_handle: Callable[[BatchLoop], None] | None = None) -> None:
        self.batches: list[list[SourceRecord]] = []
        self.settlements: list[_Settlement] = []
        self.on_handle = on_handle
        self.served = 0

    def handle(self, records: Sequence[SourceRecord], loop: BatchLoop) -> _Settlement:
        self.batches.append(list(records))
        if self.on_handle is not None:
            self.on_handle(loop)
        settlement = _Settlement()
        self.settlements.append(settlement)
        return settlement

    def serve(self, timeout_s: float) -> None:
        self.served += 1
        time.sleep(timeout_s)

    def idle(self) -> None:
        pass

    def forget(self) -> None:
        pass

    def offsets(self) -> list[int]:
        return [r.offset for batch in self.batches for r in batch]


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(topic, value=str(i).encode(), partition=0)
    assert producer.flush(30) == 0


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def _committed(bootstrap: str, group: str, topic: str) -> int:
    probe = _consumer(bootstrap, group)
    try:
        [tp] = probe.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        probe.close()


def _turn_until(loop: BatchLoop, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        loop.turn()
        if done():
            return
    raise AssertionError("the loop did not get there")


def test_offsets_are_committed_only_for_settled_batches_in_order(
    stack: RunningStack, topic_factory: Any
) -> None:
    topic = topic_factory("batch-loop", partitions=1)
    group = f"batch-loop-{uuid.uuid4().hex[:8]}"
    work = _Work()
    consumer = _consumer(stack.bootstrap, group)
    loop = BatchLoop(consumer, [topic], work, max_records=10, max_in_flight=5)
    loop.subscribe()
    try:
        _produce(stack.bootstrap, topic, 30)
        _turn_until(loop, lambda: len(work.offsets()) == 30)
        assert work.offsets() == list(range(30))  # in order, each once
        first_batch_end = work.batches[0][-1].offset + 1
        # Nothing settled: nothing committed. The second batch settled first: still nothing
        loop.turn()
        assert _committed(stack.bootstrap, group, topic) < 0
        work.settlements[1].done = True
        loop.turn()
        assert _committed(stack.bootstrap, group, topic) < 0
        # The first settles: both are committed, up to the second's end
        work.settlements[0].done = True
        second_batch_end = work.batches[1][-1].offset + 1
        loop.turn()
        loop._confirm_commits()
        assert first_batch_end < second_batch_end
        assert _committed(stack.bootstrap, group, topic) == second_batch_end
    finally:
        consumer.close()

    # The group's next consumer replays what was not settled, from where the commit is
    replay = _Work()
    consumer = _consumer(stack.bootstrap, group)
    loop = BatchLoop(consumer, [topic], replay)
    loop.subscribe()
    try:
        _turn_until(loop, lambda: len(replay.offsets()) == 30 - second_batch_end)
        assert replay.offsets() == list(range(second_batch_end, 30))
    finally:
        consumer.close()


def test_waiting_in_keep_alive_neither_skips_nor_repeats_a_record(
    stack: RunningStack, topic_factory: Any
) -> None:
    """A hand-over that waits (a retry) pauses the partitions and keeps consuming; what
    those calls return is rewound and comes again in the next batches, in order."""
    topic = topic_factory("batch-loop-wait", partitions=1)
    group = f"batch-loop-{uuid.uuid4().hex[:8]}"
    waits = iter([0.5, 0.5])

    def wait_twice(loop: BatchLoop) -> None:
        seconds = next(waits, 0.0)
        if seconds:
            loop.keep_alive(seconds)

    work = _Work(on_handle=wait_twice)
    consumer = _consumer(stack.bootstrap, group)
    loop = BatchLoop(consumer, [topic], work, max_records=50, max_in_flight=1000, consume_gap_s=0.1)
    loop.subscribe()
    try:
        _produce(stack.bootstrap, topic, 400)
        _turn_until(loop, lambda: len(work.offsets()) >= 400)
        assert work.offsets() == list(range(400))
        assert work.served > 0  # the work was served while the loop waited
    finally:
        consumer.close()


def test_an_error_gives_up_the_batches_in_flight_uncommitted(
    stack: RunningStack, topic_factory: Any
) -> None:
    """`run` ends on the work's error without waiting to settle or commit anything in
    flight (the drain would wait 15 s for batches nobody will settle); the group's next
    consumer reads them all again."""
    topic = topic_factory("batch-loop-error", partitions=1)
    group = f"batch-loop-{uuid.uuid4().hex[:8]}"
    _produce(stack.bootstrap, topic, 30)
    forgotten: list[bool] = []

    class Failing(_Work):
        def handle(self, records: Sequence[SourceRecord], loop: BatchLoop) -> _Settlement:
            if len(self.batches) == 2:
                raise RuntimeError("the work broke")
            return super().handle(records, loop)

        def forget(self) -> None:
            forgotten.append(True)

    work = Failing()
    loop = BatchLoop(
        _consumer(stack.bootstrap, group), [topic], work, max_records=10, max_in_flight=5
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the work broke"):
        loop.run(stop=Event())  # never set: only the error ends it
    assert time.monotonic() - started < 10  # not the 15 s drain
    assert forgotten == [True]
    assert _committed(stack.bootstrap, group, topic) < 0

    replay = _Work()
    consumer = _consumer(stack.bootstrap, group)
    loop = BatchLoop(consumer, [topic], replay)
    loop.subscribe()
    try:
        _turn_until(loop, lambda: len(replay.offsets()) == 30)
        assert replay.offsets() == list(range(30))
    finally:
        consumer.close()
