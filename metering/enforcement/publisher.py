"""Publishes a batch's outputs and tells when the broker has all of them.

The worker lets faust acknowledge a batch only once its outputs are acknowledged by the
broker, so an offset is never committed for input whose outputs might still be lost
(at-least-once; consumers de-dup by event_id / notification_id).

Two ways in:
- `send` (asyncio, the worker): hands the messages to the producer at once, in order,
  and returns a `Delivery` to await. No executor hop and no `flush()` per batch, so the
  next batch is processed while this one waits for its acks. Delivery reports are served
  on the event loop (`poll(0)` every POLL_INTERVAL_S while any are outstanding): a poll
  thread would take the GIL once per report, and a busy loop thread hands it over only
  every switch interval (5 ms), which throttles the reports.
- `produce` (a thread that polls the producer itself, the usage hot path): hands the
  messages over and returns their `Acks`, settled by the reports its `poll` runs.
- `publish_blocking` (threads, e.g. the ClickHouse sink): produce and flush.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from metering import kafka_clients
from metering.emitter import producer_config
from metering.enforcement.records import OutputMessage

POLL_INTERVAL_S = 0.001
BUFFER_FULL_WAIT_S = 0.005


class PublishFailed(RuntimeError):
    pass


class Delivery:
    """The broker's acknowledgement of one `send`: await it; it raises `PublishFailed` if
    any message failed or could not be handed to the producer.

    The last delivery report settles it, through the loop (thread-safe: the reports come
    from whichever thread polls the producer, normally the loop's own)."""

    __slots__ = ("_errors", "_future", "_lock", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._pending = count
        self._errors: list[str] = []
        self._lock = threading.Lock()
        if count == 0:
            self._future.set_result(None)

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        """One message's delivery report."""
        with self._lock:
            if error is not None:
                self._errors.append(error.str())
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._loop.call_soon_threadsafe(self._settle)

    def unsent(self, count: int, reason: str) -> None:
        """`count` messages never reached the producer (on the loop thread)."""
        with self._lock:
            self._errors.append(reason)
            self._pending -= count
            last = self._pending == 0
        if last:
            self._settle()

    def _settle(self) -> None:
        if self._future.done():
            return
        if self._errors:
            self._future.set_exception(
                PublishFailed(f"{len(self._errors)} failed; first: {self._errors[0]}")
            )
        else:
            self._future.set_result(None)

    def done(self) -> bool:
        return self._future.done()

    def __await__(self) -> Generator[Any, None, None]:
        return self._future.__await__()


class Acks:
    """The broker's acknowledgement of one `produce` call. Its reports run in the thread
    that calls `Publisher.poll`, the same that produced: no lock."""

    __slots__ = ("errors", "pending")

    def __init__(self, count: int) -> None:
        self.pending = count
        self.errors: list[str] = []

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.errors.append(error.str())
        self.pending -= 1

    def done(self) -> bool:
        return self.pending <= 0


class Publisher:
    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        self._producer = kafka_clients.producer(producer_config(bootstrap, **overrides))
        self._outstanding: set[Delivery] = set()
        self._poller: asyncio.Task[None] | None = None

    # -- asyncio -------------------------------------------------------------------

    async def _poll_while_outstanding(self) -> None:
        poll = self._producer.poll
        outstanding = self._outstanding
        while outstanding:
            await asyncio.sleep(POLL_INTERVAL_S)
            poll(0)  # runs the delivery reports that are due, here on the loop thread
            for delivery in [d for d in outstanding if d.done()]:
                outstanding.discard(delivery)
        self._poller = None

    async def send(self, messages: Sequence[OutputMessage]) -> Delivery:
        """Hand `messages` to the producer now, in order, and return their `Delivery`.
        Waits (without blocking the loop) only while the producer's queue is full."""
        delivery = Delivery(asyncio.get_running_loop(), len(messages))
        if not messages:
            return delivery
        self._outstanding.add(delivery)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_while_outstanding())
        report = delivery.on_delivery
        for index, message in enumerate(messages):
            try:
                while not self._hand_over(message, report):
                    await asyncio.sleep(BUFFER_FULL_WAIT_S)  # the poller drains it
            except KafkaException as exc:
                delivery.unsent(len(messages) - index, str(exc))
                return delivery
        return delivery

    def _hand_over(self, message: OutputMessage, report: Callable[..., None]) -> bool:
        """One message to the producer; False while its queue is full (try again once
        delivery reports have made room). Raises `KafkaException`."""
        try:
            self._producer.produce(
                message.topic, value=message.value, key=message.key.encode(), on_delivery=report
            )
        except BufferError:
            return False
        return True

    async def publish(self, messages: Sequence[OutputMessage]) -> None:
        """Send and wait for the broker's acknowledgement of every message."""
        await (await self.send(messages))

    # -- threads -------------------------------------------------------------------

    def produce(self, messages: Sequence[OutputMessage]) -> Acks:
        """Hand `messages` to the producer now, in order; `poll` settles their `Acks`."""
        acks = Acks(len(messages))
        report = acks.on_delivery
        for index, message in enumerate(messages):
            try:
                while not self._hand_over(message, report):
                    self._producer.poll(BUFFER_FULL_WAIT_S)  # room comes with the reports
            except KafkaException as exc:
                acks.errors.append(str(exc))
                acks.pending -= len(messages) - index
                return acks
        return acks

    def poll(self, timeout_s: float = 0) -> None:
        """Run the delivery reports that are due (in this thread)."""
        self._producer.poll(timeout_s)

    def publish_blocking(self, messages: Sequence[OutputMessage]) -> None:
        errors: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error.str())

        for message in messages:
            while not self._hand_over(message, on_delivery):
                self._producer.poll(0.05)
        remaining = self._producer.flush(60)
        if errors or remaining:
            raise PublishFailed(f"{len(errors)} failed, {remaining} unsent; first: {errors[:1]}")
