"""What the account and usage processors share: their dependencies and dead-lettering."""

from __future__ import annotations

from redis.asyncio import Redis

from billing.pricing import PriceBook
from metering.enforcement.notify import BatchResult
from metering.enforcement.records import OutputMessage, SourceRecord, dead_letter
from metering.enforcement.scripts import Scripts
from metering.topics import DEFAULT_TOPICS, TopicNames
from schemas.validation import encode_event


class BatchProcessor:
    def __init__(
        self, client: Redis, book: PriceBook, prefix: str = "", topics: TopicNames = DEFAULT_TOPICS
    ) -> None:
        self._redis = client
        self._scripts = Scripts(client)
        self._book = book
        self._prefix = prefix
        self._topics = topics

    def _reject(
        self,
        result: BatchResult,
        record: SourceRecord,
        reason: str,
        detail: str,
        event_id: str | None = None,
    ) -> None:
        """Dead-letter `record` with its reason (G4): never dropped, never a crash."""
        letter = dead_letter(record, reason, detail, event_id)
        key = record.key.decode("utf-8", "replace") if record.key else ""
        result.outputs.append(
            OutputMessage(self._topics.usage_deadletter, key, encode_event(letter))
        )
        result.dead_lettered += 1
        result.dead_letter_reasons[reason] += 1
