"""The account processor publishes each account event's outcome (`account.outcomes.v1`),
the one the ClickHouse ledger stores: first occurrences only, the same bytes again when a
batch is replayed after a crash, whatever part of it was applied before (real Redis)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from billing.pricing import PriceBook, default_price_book_text
from metering.clickhouse.rows import ACCOUNT_COLUMNS, outcome_row
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.records import SourceRecord
from metering.topics import TopicNames
from tests.conftest import RunningStack

BOOK = PriceBook.from_json(default_price_book_text())
TOPICS = TopicNames("t.")
NOW_MS = int(datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp() * 1000)


def record(
    offset: int, kind: str, data: dict[str, Any], event_id: str, actor: Any = None
) -> SourceRecord:
    value = {
        "event_id": event_id,
        "type": kind,
        "org_id": "org_a",
        "occurred_at": "2026-11-24T11:00:00Z",
        "actor": actor,
        "data": data,
    }
    return SourceRecord(
        TOPICS.account_events, 0, offset, b"org_a", json.dumps(value).encode(), NOW_MS
    )


OWNER = {"user_id": "ann", "role": "primary_owner"}
HISTORY = [
    record(
        0,
        "org.created",
        {
            "plan": "usage_based",
            "billing_mode": "self_serve",
            "term_start": "2026-11-01",
            "seats": {"enterprise": 2},
        },
        "c",
    ),
    record(
        1,
        "member.added",
        {"user_id": "ann", "role": "primary_owner", "seat_type": "enterprise"},
        "m1",
    ),
    record(
        2, "member.added", {"user_id": "bob", "role": "member", "seat_type": "enterprise"}, "m2"
    ),
    record(3, "credits.purchased", {"purchase_id": "p1", "amount": "50.00"}, "p1", OWNER),
    # bob is a member: refused (R14)
    record(
        4,
        "spend_cap.set",
        {"user_id": "bob", "limit": "5.00"},
        "cap1",
        {"user_id": "bob", "role": "owner"},
    ),
    record(5, "credits.purchased", {"purchase_id": "p1", "amount": "50.00"}, "p1", OWNER),  # dup
    record(6, "credits.purchased", {"purchase_id": "p1", "amount": "9.00"}, "p2"),
    SourceRecord(TOPICS.account_events, 0, 7, b"org_a", b"{oops", NOW_MS),
    record(8, "spend_cap.set", {"user_id": None, "limit": None}, "cap2", OWNER),
]
STATUS = ACCOUNT_COLUMNS.index("status")
REASON = ACCOUNT_COLUMNS.index("reason")
AMOUNT = ACCOUNT_COLUMNS.index("amount_nano_usd")
PLAN = ACCOUNT_COLUMNS.index("plan")
OFFSET = ACCOUNT_COLUMNS.index("source_offset")


def published(stack: RunningStack, prefix: str, *batches: list[SourceRecord]) -> list[list[bytes]]:
    """The outcome values each batch published, processed in turn."""

    async def run() -> list[list[bytes]]:
        client = AsyncRedis.from_url(stack.settings.redis_url)
        try:
            processor = AccountProcessor(client, BOOK, prefix, TOPICS)
            found = []
            for batch in batches:
                result = await processor.process(batch)
                found.append(
                    [o.value or b"" for o in result.outputs if o.topic == TOPICS.account_outcomes]
                )
            return found
        finally:
            await client.aclose()

    return asyncio.run(run())


def rows(values: list[bytes]) -> list[tuple[Any, ...]]:
    return [
        outcome_row(SourceRecord(TOPICS.account_outcomes, 0, i, b"org_a", v, NOW_MS))
        for i, v in enumerate(values)
    ]


def test_each_first_occurrence_has_its_outcome_and_a_replay_repeats_it(
    stack: RunningStack, redis_prefix: tuple[redis.Redis, str]
) -> None:
    _client, prefix = redis_prefix
    first, replay = published(stack, prefix, HISTORY, HISTORY)
    stored = rows(first)
    assert [(r[0], r[STATUS], r[REASON]) for r in stored] == [
        ("c", "accepted", ""),
        ("m1", "accepted", ""),
        ("m2", "accepted", ""),
        ("p1", "accepted", ""),
        ("cap1", "rejected", "not_permitted"),
        # offset 5, the same event_id again: none (its first occurrence decided)
        ("p2", "rejected", "duplicate_purchase"),
        # offset 7, not an account event: none (dead-lettered)
        ("cap2", "accepted", ""),
    ]
    assert [r[OFFSET] for r in stored] == [0, 1, 2, 3, 4, 6, 8]
    assert stored[3][AMOUNT] == 50 * 10**9
    assert {r[PLAN] for r in stored} == {"usage_based"}
    # The worker died after Redis, before committing: the batch comes again, and its
    # outcomes go out again exactly as first sent (the ledger collapses them).
    assert replay == first


def test_a_batch_replayed_after_any_part_was_applied_publishes_the_same_outcomes(
    stack: RunningStack, redis_prefix: tuple[redis.Redis, str]
) -> None:
    _client, prefix = redis_prefix
    (whole,) = published(stack, f"{prefix}whole:", HISTORY)
    for cut in range(1, len(HISTORY)):
        before, after = published(stack, f"{prefix}{cut}:", HISTORY[:cut], HISTORY)
        assert after == whole, f"cut at {cut}"
        assert before == [v for v in whole if json.loads(v)["source_offset"] < cut]
