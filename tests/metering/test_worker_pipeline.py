"""The worker's batch pipeline: an input offset is acknowledged to faust only once its
batch's outputs are acknowledged by the broker (and its notification marks recorded),
and only after every earlier batch — whatever order the broker acknowledges them in.

The faust side is the real `ConsumerMessage` reference counting (what decides when an
offset may be committed); the stream, publisher and Redis around it are stand-ins, so the
order of events can be driven step by step. `Publisher.send` itself runs against the
real broker at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest
from faust.types.tuples import ConsumerMessage
from redis.asyncio import Redis

from metering import worker
from metering.enforcement.notify import BatchResult
from metering.enforcement.publisher import Delivery, Publisher, PublishFailed
from metering.enforcement.records import OutputMessage, SourceRecord
from metering.worker import BatchPipeline
from tests.conftest import RunningStack


class Consumer:
    """Records final acknowledgements (what faust would commit from), and tells how far
    the input goes (the high watermark)."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.high: int | None = None

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append(message.offset)
        return True

    def highwater(self, _tp: Any) -> int | None:
        return self.high


class Event:
    def __init__(self, consumer: Consumer, offset: int) -> None:
        self.consumer = consumer
        self.message = ConsumerMessage("usage", 0, offset, 1.0, 0, None, b"org", b"{}", None)
        self.message.incref()  # the conductor's reference, for the one stream

    def ack(self) -> bool:
        return bool(self.message.ack(cast(Any, self.consumer)))


class App:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer


class Stream:
    def __init__(self, consumer: Consumer) -> None:
        self.app = App(consumer)

    async def ack(self, event: Event) -> bool:
        return event.ack()


class Processor:
    """One output per record; records at offsets in `notify_at` make a batch due a
    notification (a mark to record after publishing)."""

    def __init__(self, notify_at: frozenset[int] = frozenset()) -> None:
        self.notify_at = notify_at
        self.batches: list[list[int]] = []

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        self.batches.append([r.offset for r in records])
        result = BatchResult()
        for record in records:
            result.outputs.append(OutputMessage("priced", "org", str(record.offset).encode()))
            if record.offset in self.notify_at:
                result.marks.append(("sadd", "notified", str(record.offset)))
        return result


class FakePublisher:
    """`send` returns a delivery the test settles (or fails) when it wants."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.sent: list[list[bytes]] = []

    async def send(self, messages: Sequence[OutputMessage]) -> Delivery:
        delivery = Delivery(asyncio.get_running_loop(), len(messages))
        self.deliveries.append(delivery)
        self.sent.append([m.value for m in messages])
        return delivery

    def ack(self, index: int) -> None:
        """The broker acknowledges every message of the `index`th send."""
        for _ in self.sent[index]:
            self.deliveries[index].on_delivery(None, cast(Any, None))


class FakeRedis:
    """Just enough of redis.asyncio for `record_marks`."""

    def __init__(self) -> None:
        self.marks: list[str] = []
        self._queued: list[str] = []

    def pipeline(self, transaction: bool = False) -> FakeRedis:
        return self

    def sadd(self, _key: str, member: str) -> None:
        self._queued.append(member)

    async def execute(self) -> list[int]:
        self.marks += self._queued
        self._queued = []
        return []


class Harness:
    def __init__(self, processor: Processor | None = None) -> None:
        self.consumer = Consumer()
        self.publisher = FakePublisher()
        self.redis = FakeRedis()
        self.processor = processor or Processor()
        self.stream = Stream(self.consumer)
        self.pipeline = BatchPipeline(
            self.stream,
            self.processor,
            cast(Publisher, self.publisher),
            cast(Redis, self.redis),
        )
        self.offset = 0

    def batch(self, size: int) -> list[Event]:
        events = [Event(self.consumer, self.offset + i) for i in range(size)]
        self.offset += size
        return events

    async def take(self, events: list[Event]) -> None:
        """What the agent does with one `take_events` batch: hand it over, then — as
        faust does when the agent asks for the next batch — acknowledge its events; then
        let the pipeline's tasks run."""
        await self.pipeline.take(events)
        for event in events:
            await self.stream.ack(event)
        await settle()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_no_offset_is_acknowledged_before_its_outputs_are() -> None:
    async def run() -> None:
        h = Harness()
        await h.take(h.batch(3))
        assert h.consumer.acked == []  # applied and handed over, but not yet durable
        h.publisher.ack(0)
        await settle()
        assert h.consumer.acked == [0, 1, 2]

    asyncio.run(run())


def test_batches_are_acknowledged_in_order_whatever_order_the_broker_acks() -> None:
    async def run() -> None:
        h = Harness()
        await h.take(h.batch(2))
        await h.take(h.batch(2))  # applied while the first batch waits for its acks
        assert h.processor.batches == [[0, 1], [2, 3]]
        h.publisher.ack(1)
        await settle()
        assert h.consumer.acked == []  # the second is durable, the first is not
        h.publisher.ack(0)
        await settle()
        assert h.consumer.acked == [0, 1, 2, 3]

    asyncio.run(run())


def test_at_most_max_in_flight_batches_wait_for_acks() -> None:
    async def run() -> None:
        h = Harness()
        for _ in range(worker.MAX_IN_FLIGHT + 2):
            await h.take(h.batch(1))
        # MAX_IN_FLIGHT + 1 applied: the last one waits for the first's acks to go on
        assert h.processor.batches == [[i] for i in range(worker.MAX_IN_FLIGHT + 1)]
        h.publisher.ack(0)
        await settle()
        assert h.processor.batches[-1] == [worker.MAX_IN_FLIGHT + 1]
        for index in range(1, worker.MAX_IN_FLIGHT + 2):
            h.publisher.ack(index)
        await settle()
        assert h.consumer.acked == list(range(worker.MAX_IN_FLIGHT + 2))

    asyncio.run(run())


def test_a_batch_due_notifications_completes_before_the_next_is_applied() -> None:
    async def run() -> None:
        h = Harness(Processor(notify_at=frozenset({1})))
        await h.take(h.batch(2))
        await h.take(h.batch(2))
        assert h.processor.batches == [[0, 1]]  # the next batch's scripts must see the mark
        assert h.redis.marks == []  # marks are recorded only once published
        h.publisher.ack(0)
        await settle()
        assert h.redis.marks == ["1"]
        assert h.consumer.acked == [0, 1]
        assert h.processor.batches == [[0, 1], [2, 3]]

    asyncio.run(run())


def test_with_no_backlog_each_batch_is_applied_at_once() -> None:
    async def run() -> None:
        h = Harness()
        await h.take(h.batch(3))
        assert h.processor.batches == [[0, 1, 2]]

    asyncio.run(run())


def test_under_a_backlog_batches_are_gathered_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "APPLY_TARGET", 6)
    monkeypatch.setattr(worker, "GATHER_MAX_S", 0.05)

    async def run() -> None:
        h = Harness()
        h.consumer.high = 1000  # a backlog: far more input than taken so far
        await h.take(h.batch(2))
        await h.take(h.batch(2))
        assert h.processor.batches == []  # fewer than APPLY_TARGET: gathering
        await h.take(h.batch(2))
        assert h.processor.batches == [[0, 1, 2, 3, 4, 5]]  # one script round trip
        await h.take(h.batch(2))
        assert h.processor.batches == [[0, 1, 2, 3, 4, 5]]
        await asyncio.sleep(0.06)  # …but no longer than GATHER_MAX_S
        assert h.processor.batches == [[0, 1, 2, 3, 4, 5], [6, 7]]
        h.consumer.high = 10  # the backlog is gone: what is taken is applied at once
        await h.take(h.batch(1))
        assert h.processor.batches[-1] == [8]

    asyncio.run(run())


def test_failed_delivery_is_sent_again_and_acknowledged_only_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "RETRY_BACKOFF_S", (0.0,))

    async def run() -> None:
        h = Harness()
        await h.take(h.batch(2))
        first = h.publisher.deliveries[0]
        first.on_delivery(cast(Any, FailedReport()), cast(Any, None))  # one refused…
        first.on_delivery(None, cast(Any, None))  # …one delivered
        await settle()
        assert h.consumer.acked == []
        assert h.publisher.sent == [[b"0", b"1"], [b"0", b"1"]]  # the whole batch again
        h.publisher.ack(1)
        await settle()
        assert h.consumer.acked == [0, 1]
        assert h.processor.batches == [[0, 1]]  # Redis is not asked twice

    asyncio.run(run())


class FailedReport:
    def str(self) -> str:
        return "Broker: Not enough in-sync replicas"


# -- Publisher.send against the real broker ------------------------------------------


@pytest.mark.stack
def test_send_resolves_once_the_broker_has_every_message(
    stack: RunningStack, topic_factory: Any
) -> None:
    topic = topic_factory("pipeline-send", partitions=3)

    async def run() -> None:
        publisher = Publisher(stack.bootstrap)
        messages = [OutputMessage(topic, f"org{i % 7}", b"x" * 100) for i in range(2000)]
        delivery = await publisher.send(messages)
        await asyncio.wait_for(asyncio.ensure_future(_wait(delivery)), timeout=30)
        assert delivery.done()
        await publisher.publish([])  # nothing to send: resolves at once

    asyncio.run(run())


@pytest.mark.stack
def test_send_fails_when_a_message_is_refused(stack: RunningStack, topic_factory: Any) -> None:
    topic = topic_factory("pipeline-send-refused", partitions=1)

    async def run() -> None:
        publisher = Publisher(stack.bootstrap)
        too_large = OutputMessage(topic, "org", b"x" * 2_000_000)  # > message.max.bytes
        delivery = await publisher.send([OutputMessage(topic, "org", b"ok"), too_large])
        with pytest.raises(PublishFailed):
            await asyncio.wait_for(asyncio.ensure_future(_wait(delivery)), timeout=30)

    asyncio.run(run())


async def _wait(delivery: Delivery) -> None:
    await delivery
