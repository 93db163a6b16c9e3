"""The ledger fold decides what the account processor decided, and survives a restart
(restore from stored rows) without changing any outcome."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from billing.pricing import PriceBook, default_price_book_text
from metering.clickhouse.ledger import LedgerFold
from metering.clickhouse.rows import ACCOUNT_COLUMNS
from metering.enforcement.records import SourceRecord

BOOK = PriceBook.from_json(default_price_book_text())
NOW_MS = int(datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp() * 1000)
_offsets = itertools.count()


def record(kind: str, data: dict[str, Any], *, event_id: str, actor: Any = None) -> SourceRecord:
    value = {
        "event_id": event_id,
        "type": kind,
        "org_id": "org_a",
        "occurred_at": "2026-11-24T11:00:00Z",
        "actor": actor,
        "data": data,
    }
    return SourceRecord(
        "account.events.v1", 0, next(_offsets), b"org_a", json.dumps(value).encode(), NOW_MS
    )


HISTORY = [
    record(
        "org.created",
        {
            "plan": "usage_based",
            "billing_mode": "self_serve",
            "term_start": "2026-11-01",
            "seats": {"enterprise": 2},
        },
        event_id="c",
    ),
    record(
        "member.added",
        {"user_id": "ann", "role": "primary_owner", "seat_type": "enterprise"},
        event_id="m1",
    ),
    record(
        "member.added",
        {"user_id": "bob", "role": "member", "seat_type": "enterprise"},
        event_id="m2",
    ),
    record(
        "credits.purchased",
        {"purchase_id": "p1", "amount": "50.00"},
        event_id="p1",
        actor={"user_id": "ann", "role": "primary_owner"},
    ),
    record(
        "spend_cap.set",
        {"user_id": "bob", "limit": "5.00"},
        event_id="cap1",
        actor={"user_id": "bob", "role": "owner"},
    ),  # bob is a member: refused (R14)
    record("credits.purchased", {"purchase_id": "p1", "amount": "50.00"}, event_id="p1"),  # dup
    record("credits.purchased", {"purchase_id": "p1", "amount": "9.00"}, event_id="p2"),
    SourceRecord("account.events.v1", 0, next(_offsets), b"org_a", b"{oops", NOW_MS),
    record(
        "spend_cap.set",
        {"user_id": None, "limit": None},
        event_id="cap2",
        actor={"user_id": "ann", "role": "primary_owner"},
    ),
]
STATUS = ACCOUNT_COLUMNS.index("status")
REASON = ACCOUNT_COLUMNS.index("reason")
AMOUNT = ACCOUNT_COLUMNS.index("amount_nano_usd")


def outcomes(rows: list[tuple[Any, ...] | None]) -> list[tuple[str, str, str] | None]:
    return [(r[0], r[STATUS], r[REASON]) if r else None for r in rows]


def test_each_event_is_stored_once_with_its_outcome() -> None:
    fold = LedgerFold(BOOK)
    rows = [fold.apply(r) for r in HISTORY]
    assert outcomes(rows) == [
        ("c", "accepted", ""),
        ("m1", "accepted", ""),
        ("m2", "accepted", ""),
        ("p1", "accepted", ""),
        ("cap1", "rejected", "not_permitted"),
        None,  # the same event_id again: stored once
        ("p2", "rejected", "duplicate_purchase"),
        None,  # not an account event: the processor dead-letters it
        ("cap2", "accepted", ""),
    ]
    assert rows[3] is not None and rows[3][AMOUNT] == 50 * 10**9
    state = fold.state("org_a")
    assert state is not None and state.org_cap_nano_usd is None


def stored_form(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What `restore` reads back from ClickHouse for a row."""
    columns = dict(zip(ACCOUNT_COLUMNS, row, strict=True))
    return tuple(
        columns[name]
        for name in (
            "event_id",
            "org_id",
            "type",
            "occurred_at",
            "actor_user_id",
            "actor_role",
            "data",
            "status",
        )
    )


def test_a_restored_fold_continues_with_the_same_outcomes() -> None:
    for cut in range(len(HISTORY) + 1):
        whole = LedgerFold(BOOK)
        expected = [whole.apply(r) for r in HISTORY]
        first = LedgerFold(BOOK)
        before = [first.apply(r) for r in HISTORY[:cut]]
        restored = LedgerFold(BOOK)
        restored.restore(stored_form(r) for r in before if r is not None)
        # the replay after a crash sees the stored records again, then the rest
        after = [restored.apply(r) for r in HISTORY]
        assert outcomes([r for r in after if r]) == outcomes([r for r in expected[cut:] if r])
