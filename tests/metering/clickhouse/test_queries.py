"""Each dashboard query against a fixed scenario: the values a plain-Python reference
computes from the same events, and a few golden numbers written out by hand."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from metering.clickhouse import queries
from metering.clickhouse.rows import USAGE_COLUMNS, usage_row
from metering.clickhouse.store import Store
from metering.enforcement.records import SourceRecord, priced_json
from schemas.usage import UsageEvent
from schemas.validation import encode_event

MONTH = "2026-11"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
RATE_PER_OUTPUT_TOKEN = {"claude-haiku-4-5": 5000, "claude-sonnet-4-5": 15000}  # nano-USD


def priced(
    event_id: str,
    org: str,
    user: str,
    model: str,
    surface: str,
    tokens: int,
    at: datetime,
    included: int = 0,
    offset: int = 0,
) -> SourceRecord:
    event = UsageEvent(
        event_id=event_id,
        org_id=org,
        user_id=user,
        surface=surface,
        model=model,
        input_tokens=0,
        output_tokens=tokens,
        occurred_at=at,
    )
    cost = tokens * RATE_PER_OUTPUT_TOKEN[model]
    value = priced_json(
        encode_event(event),
        cost_nano_usd=cost,
        included_nano_usd=included,
        price_version=date(2025, 1, 1),
        partition=0,
        offset=offset,
    )
    return SourceRecord(
        "usage.priced.v1", 0, offset, org.encode(), value, int(NOW.timestamp() * 1000)
    )


def scenario() -> list[SourceRecord]:
    rng = random.Random(11)
    records = [
        # Golden: org_gold in November — ann 1.00 + 0.50 USD on two days, bob 0.30 USD
        # of which 0.10 covered by his seat allowance; one October event (late month)
        priced(
            "g1",
            "org_gold",
            "ann",
            "claude-haiku-4-5",
            "chat_web",
            200_000,
            datetime(2026, 11, 2, 9, tzinfo=UTC),
        ),
        priced(
            "g2",
            "org_gold",
            "ann",
            "claude-sonnet-4-5",
            "claude_code",
            100_000 // 3,
            datetime(2026, 11, 3, 9, tzinfo=UTC),
        ),
        priced(
            "g3",
            "org_gold",
            "bob",
            "claude-sonnet-4-5",
            "chat_web",
            20_000,
            datetime(2026, 11, 3, 23, 59, 59, tzinfo=UTC),
            included=100_000_000,
        ),
        priced(
            "g4",
            "org_gold",
            "bob",
            "claude-haiku-4-5",
            "chat_web",
            1_000_000,
            datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),
        ),
    ]
    for index in range(400):
        org = f"org_{rng.randrange(6)}"
        records.append(
            priced(
                f"r{index}",
                org,
                f"{org}_u{rng.randrange(4)}",
                rng.choice(list(RATE_PER_OUTPUT_TOKEN)),
                rng.choice(["chat_web", "claude_code", "cowork"]),
                rng.randrange(1, 300_000),
                datetime(2026, 11, 1, tzinfo=UTC)
                + timedelta(minutes=rng.randrange(0, 23 * 24 * 60)),
                offset=index + 10,
            )
        )
    return records


@pytest.fixture
def loaded(store: Store) -> list[tuple[Any, ...]]:
    rows = [usage_row(record) for record in scenario()]
    store.insert("usage_events", rows, USAGE_COLUMNS)
    return rows


def reference(rows: list[tuple[Any, ...]], key_of: Any, keep: Any) -> list[queries.Spend]:
    col = {name: i for i, name in enumerate(USAGE_COLUMNS)}
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        if keep(row, col):
            entry = totals[key_of(row, col)]
            entry[0] += 1
            entry[1] += row[col["cost_nano_usd"]]
            entry[2] += row[col["billed_nano_usd"]]
    return [queries.Spend(k, *v) for k, v in totals.items()]


def in_month(org: str) -> Any:
    return lambda row, col: (
        row[col["org_id"]] == org and row[col["occurred_at"]].strftime("%Y-%m") == MONTH
    )


def by_billed(spends: list[queries.Spend]) -> list[queries.Spend]:
    return sorted(spends, key=lambda s: (-s.billed_nano_usd, s.key))


def test_golden_numbers(store: Store, loaded: list[tuple[Any, ...]]) -> None:
    assert queries.member_spend(store, "org_gold", MONTH) == [
        queries.Spend("ann", 2, 1_499_995_000, 1_499_995_000),
        queries.Spend("bob", 1, 300_000_000, 200_000_000),
    ]
    # the late October event stays in October
    assert queries.member_spend(store, "org_gold", "2026-10") == [
        queries.Spend("bob", 1, 5_000_000_000, 5_000_000_000)
    ]
    assert [s.key for s in queries.daily_spend(store, "org_gold", MONTH)] == [
        "2026-11-02",
        "2026-11-03",
    ]
    assert queries.surface_spend(store, "org_gold", MONTH) == [
        queries.Spend("chat_web", 2, 1_300_000_000, 1_200_000_000),
        queries.Spend("claude_code", 1, 499_995_000, 499_995_000),
    ]


@pytest.mark.parametrize("org", ["org_gold", "org_0", "org_3", "org_nobody"])
def test_per_org_queries_equal_the_reference(
    store: Store, loaded: list[tuple[Any, ...]], org: str
) -> None:
    keep = in_month(org)
    assert queries.member_spend(store, org, MONTH) == by_billed(
        reference(loaded, lambda r, c: r[c["user_id"]], keep)
    )
    assert queries.model_spend(store, org, MONTH) == by_billed(
        reference(loaded, lambda r, c: r[c["model"]], keep)
    )
    assert queries.surface_spend(store, org, MONTH) == by_billed(
        reference(loaded, lambda r, c: r[c["surface"]], keep)
    )
    assert queries.daily_spend(store, org, MONTH) == sorted(
        reference(loaded, lambda r, c: r[c["occurred_at"]].date().isoformat(), keep),
        key=lambda s: s.key,
    )


def test_top_spenders_across_orgs(store: Store, loaded: list[tuple[Any, ...]]) -> None:
    everyone = by_billed(
        reference(
            loaded,
            lambda r, c: r[c["org_id"]],
            lambda r, c: r[c["occurred_at"]].strftime("%Y-%m") == MONTH,
        )
    )
    assert queries.top_spenders(store, MONTH, limit=3) == everyone[:3]
    assert queries.top_spenders(store, "2026-10") == [
        queries.Spend("org_gold", 1, 5_000_000_000, 5_000_000_000)
    ]


def test_ingestion_lag_measures_occurred_to_stored(store: Store) -> None:
    just_now = datetime.now(UTC)
    record = priced(
        "lag1",
        "org_lag",
        "ann",
        "claude-haiku-4-5",
        "chat_web",
        1,
        just_now - timedelta(seconds=30),
    )
    store.insert("usage_events", [usage_row(record)], USAGE_COLUMNS)
    lag = queries.ingestion_lag(store, since=just_now - timedelta(minutes=1))
    assert lag.events == 1
    assert 30_000 <= lag.p50_ms < 90_000
    assert queries.ingestion_lag(store, since=just_now + timedelta(hours=1)).events == 0


def test_month_bounds() -> None:
    assert queries.month_bounds("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    assert queries.month_bounds("2028-02") == (date(2028, 2, 1), date(2028, 3, 1))
