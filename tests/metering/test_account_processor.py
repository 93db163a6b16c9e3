"""The account processor on real Redis: the seat invoices an accepted event issues go
out with its outcome, a replayed batch re-publishes them byte for byte and changes
nothing, and the renewal timer finds the contracts whose term has ended."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from billing.pricing import PriceBook, default_price_book_text
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.records import SourceRecord
from metering.enforcement.renewals import due_renewals
from metering.topics import TopicNames
from tests.conftest import RunningStack

BOOK = PriceBook.from_json(default_price_book_text())
TOPICS = TopicNames("t.")
RECEIVED_MS = int(datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp() * 1000)


def record(offset: int, kind: str, data: dict[str, Any], event_id: str) -> SourceRecord:
    value = {
        "event_id": event_id,
        "type": kind,
        "org_id": "org_p",
        "occurred_at": "2026-11-24T11:00:00Z",
        "actor": None,
        "data": data,
    }
    return SourceRecord(
        TOPICS.account_events, 0, offset, b"org_p", json.dumps(value).encode(), RECEIVED_MS
    )


HISTORY = [
    record(
        0,
        "org.created",
        {
            "plan": "usage_based",
            "billing_mode": "sales_assisted",
            "term_start": "2025-11-01",
            "seats": {"enterprise": 2},
        },
        "created",
    ),
    record(1, "seats.added", {"seat_type": "enterprise", "quantity": 3}, "added"),
    record(2, "seats.removed", {"seat_type": "enterprise", "quantity": 1}, "removed"),
]


def documents(result: BatchResult) -> list[tuple[str, bytes | None]]:
    return [(o.key, o.value) for o in result.outputs if o.topic == TOPICS.documents]


def test_seat_invoices_go_out_with_their_events_and_again_on_a_replay(
    stack: RunningStack, redis_prefix: tuple[redis.Redis, str]
) -> None:
    client, prefix = redis_prefix

    async def run() -> tuple[BatchResult, BatchResult, list[Any]]:
        async_client = AsyncRedis.from_url(stack.settings.redis_url)
        try:
            processor = AccountProcessor(async_client, BOOK, prefix, TOPICS)
            first = await processor.process(HISTORY)
            # the worker died after Redis, before committing: the batch comes again
            replay = await processor.process(HISTORY)
            due = await due_renewals(async_client, prefix, TOPICS, date(2027, 11, 1))
            assert await due_renewals(async_client, prefix, TOPICS, date(2027, 10, 31)) == []
            return first, replay, due
        finally:
            await async_client.aclose()

    state_key = f"{prefix}{{org_p}}:account"
    first, replay, due = asyncio.run(run())
    invoices = [json.loads(value or b"")["document"] for _key, value in documents(first)]
    # Created 2026-11-24 for a contract of 2025-11-01: it joins in the term that holds
    # the creation (2026-11-01), and the seats added that day pay 11 + 7/30 months (R4).
    assert [(d["document_id"], d["total"]) for d in invoices] == [
        ("org_p.seat_invoice.2026-11-01.001", "960.00"),  # 2 × 40 × 12
        ("org_p.seat_invoice.2026-11-01.002", "1348.00"),  # 3 × 40 × 11.2333…
    ]
    assert (first.accepted, replay.accepted, replay.duplicates) == (3, 0, 0)  # a replay, not news
    assert documents(replay) == documents(first)  # the same bytes, the same ids
    assert json.loads(client.get(state_key) or b"")["pending_seat_removals"] == {"enterprise": 1}
    # The term ends on 2027-11-01: from that day the timer appends the system's renewal
    assert [(r.key, json.loads(r.value or b"")["event_id"]) for r in due] == [
        ("org_p", "renewal:2027-11-01")
    ]
    assert client.zscore(f"{prefix}metering:term_ends", "org_p") == date(2027, 11, 1).toordinal()
