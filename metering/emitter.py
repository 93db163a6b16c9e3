"""The emitter SDK that product services embed to put usage on Kafka.

Hard to misuse on purpose:
- every event is validated with the schemas before it is queued; an invalid one raises
  `InvalidEvent` naming the field and the reason, and nothing is sent;
- the producer is idempotent with `acks=all`, so a retry inside librdkafka can neither
  duplicate nor reorder an org's events (the key is `org_id`, so one org → one partition);
- every send returns a Future that resolves when the broker has the event, or fails with
  the delivery error; `flush()` (or leaving the `with` block) waits for all of them and
  raises if any failed.

Delivery callbacks run inside `poll()`/`flush()` on the caller's thread; `emit_*` polls
opportunistically so a long-running service need not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from pydantic import BaseModel

from metering import kafka_clients
from metering.topics import ACCOUNT_EVENTS, USAGE_EVENTS
from schemas.account import AccountEvent
from schemas.usage import UsageEvent
from schemas.validation import encode_event, parse_account_event, parse_usage_event

Clock = Callable[[], datetime]
RawEvent = UsageEvent | Mapping[str, Any] | str | bytes


def system_clock() -> datetime:
    return datetime.now(UTC)


class DeliveryFailed(RuntimeError):
    """The broker did not take one or more events; they were not written."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} event(s) not delivered; first: {errors[0]}")
        self.errors = errors


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # implies acks=all and ordered, de-duplicated retries
        "acks": "all",
        "linger.ms": 5,  # a few ms of batching is invisible to callers and 10× throughput
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "message.timeout.ms": 120_000,
    }
    config.update(overrides)
    return config


class Emitter:
    """Validated, keyed, idempotent event production. Use as a context manager."""

    def __init__(
        self,
        bootstrap: str,
        *,
        usage_topic: str = USAGE_EVENTS,
        account_topic: str = ACCOUNT_EVENTS,
        clock: Clock = system_clock,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._producer = kafka_clients.producer(
            producer_config(bootstrap, **(producer_overrides or {}))
        )
        self._usage_topic = usage_topic
        self._account_topic = account_topic
        self._clock = clock
        self._errors: list[str] = []
        self.delivered = 0

    # -- sending ---------------------------------------------------------------
    def emit_usage(self, event: RawEvent) -> Future[Message]:
        """Validate and queue one usage event. Raises `InvalidEvent` (nothing sent)."""
        if isinstance(event, UsageEvent):
            event = event.model_dump(
                mode="json"
            )  # re-checked: a built model has not seen our clock
        parsed = parse_usage_event(event, now=self._clock())
        return self._send(self._usage_topic, parsed.org_id, parsed)

    def emit_account(
        self, event: AccountEvent | Mapping[str, Any] | str | bytes
    ) -> Future[Message]:
        """Validate and queue one account event. Raises `InvalidEvent` (nothing sent)."""
        if isinstance(event, BaseModel):
            event = event.model_dump(mode="json")
        parsed = parse_account_event(event, now=self._clock())
        return self._send(self._account_topic, parsed.org_id, parsed)

    def _send(self, topic: str, key: str, event: BaseModel) -> Future[Message]:
        future: Future[Message] = Future()
        value = encode_event(event)

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self._errors.append(f"{topic}/{key}: {error.str()}")
                future.set_exception(KafkaException(error))
            else:
                self.delivered += 1
                future.set_result(message)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key.encode(), on_delivery=on_delivery
                )
                break
            except BufferError:
                # The local queue is full: let deliveries drain, then retry. This is the
                # back-pressure a fast caller feels instead of unbounded memory.
                self._producer.poll(0.05)
        self._producer.poll(0)
        return future

    # -- completion ------------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many ran."""
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every queued event is delivered or failed; raise `DeliveryFailed`
        if any failed (or is still queued when the timeout ends)."""
        remaining = self._producer.flush(timeout_s)
        errors, self._errors = self._errors, []
        if remaining:
            errors.append(f"{remaining} event(s) still queued after {timeout_s} s")
        if errors:
            raise DeliveryFailed(errors)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
        else:
            # Still hand over what was queued, but do not mask the original error.
            self._producer.flush(10)
