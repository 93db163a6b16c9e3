"""The ClickHouse projection end to end: a real worker with its sink child process, a
mixed stream (duplicates, conflicts, dead letters, late events, refused account
events), then the embedded store is opened and compared with the reference model."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from metering.clickhouse.board import MemberStatus, read_member_board
from metering.clickhouse.store import Store
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import account
from tests.e2e.test_crash_safety import SEED, build_workload, emit_in_order, workload_time

pytestmark = pytest.mark.stack

ROW_SQL = """
SELECT event_id, org_id, user_id, model, surface, formatDateTime(occurred_at, '%Y-%m'),
       cost_nano_usd, billed_nano_usd
FROM metering.usage_events
"""

# The daily rollup, and the same numbers recomputed from the rows it was fed with.
ROLLUP_SQL = """
SELECT org_id, day, user_id, model, surface, sum(events), sum(input_tokens),
       sum(output_tokens), sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
       sum(cost_nano_usd), sum(included_nano_usd), sum(billed_nano_usd)
FROM metering.usage_daily GROUP BY org_id, day, user_id, model, surface
"""
RECOMPUTED_SQL = """
SELECT org_id, toDate(occurred_at) AS day, user_id, model, surface, count(), sum(input_tokens),
       sum(output_tokens), sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
       sum(cost_nano_usd), sum(included_nano_usd), sum(billed_nano_usd)
FROM metering.usage_events GROUP BY org_id, day, user_id, model, surface
"""
MONTHLY_SQL = """
SELECT org_id, toString(month), sum(events), sum(cost_nano_usd), sum(billed_nano_usd)
FROM metering.usage_monthly GROUP BY org_id, month
"""
MONTHLY_RECOMPUTED_SQL = """
SELECT org_id, toString(toStartOfMonth(occurred_at)) AS month, count(), sum(cost_nano_usd),
       sum(billed_nano_usd)
FROM metering.usage_events GROUP BY org_id, month
"""


def board(pipeline: Pipeline, store: Store, org: str, month: str) -> list[MemberStatus]:
    settings = pipeline.settings
    return read_member_board(settings, store, org, month)


def test_rows_equal_accepted_events_and_rollups_equal_rows(pipeline: Pipeline) -> None:
    """3,000 events with duplicates, conflicts, unknown orgs/models, malformed input and
    late events of the previous month; plus refused account events. Every accepted event
    is one row with the reference's cost, late events sit in their own month, rollups
    equal aggregates of the rows, and the ledger records each account outcome."""
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    now = workload_time()
    accounts, usage, reference = build_workload(rng, now, events=3000)
    last_month = (now.replace(day=1) - timedelta(days=3)).replace(hour=12)
    late = [
        {**usage[i], "event_id": f"late-{i}", "occurred_at": last_month.isoformat()}
        for i in range(0, 300, 10)
        if usage[i]["org_id"] in reference.orgs
    ]
    for event in late:
        reference.usage(event)
    refused = [
        # R14: only the org's owners set caps; a purchase id is credited once
        account(
            "org_k00",
            "spend_cap.set",
            {"user_id": None, "limit": "5.00"},
            actor={"user_id": "stranger", "role": "owner"},
        ),
        account(
            "org_k00",
            "credits.purchased",
            {"purchase_id": "p-org_k00", "amount": "1.00"},
            actor=None,
        ),
    ]

    pipeline.sink = True
    pipeline.start_worker()
    emit_in_order(pipeline, accounts + refused, usage + late, list(reference.orgs))
    pipeline.send_raw(pipeline.topics.usage_events, [b"{not json", b"[]"])
    pipeline.wait_caught_up()
    pipeline.stop_worker()  # its sink child flushes and leaves the store

    with Store(pipeline.settings.clickhouse_url) as store:
        rows = store.rows(ROW_SQL)
        # Exactly once without FINAL: the sink never inserted an event_id twice
        assert len(rows) == len(reference.rows)
        assert {row[0]: tuple(row[1:]) for row in rows} == reference.rows
        late_months = store.rows(
            "SELECT DISTINCT _partition_id FROM metering.usage_events WHERE event_id LIKE 'late-%'"
        )
        assert late_months == [(last_month.strftime("%Y%m"),)]
        assert sorted(store.rows(ROLLUP_SQL)) == sorted(store.rows(RECOMPUTED_SQL))
        assert sorted(store.rows(MONTHLY_SQL)) == sorted(store.rows(MONTHLY_RECOMPUTED_SQL))
        ledger = store.rows("SELECT event_id, status, reason FROM metering.account_events FINAL")

    # The ledger holds every account event once, with the processor's outcome
    def account_letters(p: Pipeline) -> list[Any]:
        return [d for d in p.dead() if d["source_topic"] == p.topics.account_events]

    pipeline.wait_for(lambda p: len(account_letters(p)) >= 2, what="account dead letters")
    account_dead = {d["event_id"]: d["reason"] for d in account_letters(pipeline)}
    assert account_dead == {
        refused[0]["event_id"]: "not_permitted",
        refused[1]["event_id"]: "duplicate_purchase",
    }
    outcomes: dict[str, Any] = {event_id: (status, reason) for event_id, status, reason in ledger}
    assert outcomes == {
        e["event_id"]: ("rejected", account_dead[e["event_id"]])
        if e["event_id"] in account_dead
        else ("accepted", "")
        for e in accounts + refused
    }
