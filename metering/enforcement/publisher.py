"""Publishes a batch's outputs and waits until the broker has all of them.

The worker calls it before it lets faust acknowledge the batch, so an offset is never
committed for input whose outputs might still be lost (at-least-once; consumers de-dup
by event_id / notification_id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, Producer

from metering.emitter import producer_config
from metering.enforcement.records import OutputMessage


class PublishFailed(RuntimeError):
    pass


class Publisher:
    def __init__(self, bootstrap: str) -> None:
        self._producer = Producer(
            producer_config(bootstrap), logger=logging.getLogger("metering.kafka")
        )

    def publish_blocking(self, messages: Sequence[OutputMessage]) -> None:
        errors: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error.str())

        for message in messages:
            while True:
                try:
                    self._producer.produce(
                        message.topic,
                        value=message.value,
                        key=message.key.encode(),
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
        remaining = self._producer.flush(60)
        if errors or remaining:
            raise PublishFailed(f"{len(errors)} failed, {remaining} unsent; first: {errors[:1]}")

    async def publish(self, messages: Sequence[OutputMessage]) -> None:
        if messages:
            await asyncio.get_running_loop().run_in_executor(None, self.publish_blocking, messages)
