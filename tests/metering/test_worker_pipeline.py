"""`Publisher.send`, the worker's way to hand a batch's outputs to the broker without a
flush per batch, against the real broker: the returned `Delivery` resolves once the
broker has every message, and fails if any is refused.

The batch pipeline's ordering (an offset is acknowledged only after its outputs are
durable, in batch order) is exercised end to end by `tests/e2e/test_crash_safety.py`
(SIGKILL at random points, two-worker hand-over) against real Kafka and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metering.enforcement.publisher import Delivery, Publisher, PublishFailed
from metering.enforcement.records import OutputMessage
from tests.conftest import RunningStack

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
