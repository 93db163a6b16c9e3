"""What the account and usage processors share: their dependencies and dead-lettering."""

from __future__ import annotations

from typing import Any

from billing.pricing import PriceBook
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.records import SourceRecord, dead_letter_message
from metering.topics import DEFAULT_TOPICS, TopicNames


class BatchProcessor:
    def __init__(
        self, client: Any, book: PriceBook, prefix: str = "", topics: TopicNames = DEFAULT_TOPICS
    ) -> None:
        # A redis-py client: asyncio for the account processor (in faust), synchronous
        # for the usage processor (in the hot path's thread); each types its own.
        self._redis = client
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
        result.outputs.append(
            dead_letter_message(self._topics.usage_deadletter, record, reason, detail, event_id)
        )
        result.dead_letter_reasons[reason] += 1
