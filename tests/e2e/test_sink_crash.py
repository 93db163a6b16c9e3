"""G2 for the ClickHouse sink: it is killed between an insert and its offset commit (a
crash the test installs at that point, tests/e2e/faulty.py) and at random moments
(SIGKILL) while the processors keep producing; after a final catch-up, the rows, the
rollups and every dashboard query equal the reference model's — as if nothing had
happened."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import defaultdict

import pytest

from metering.clickhouse import queries
from metering.clickhouse.store import Store
from metering.faults import Point
from tests.e2e.faulty import EXIT_FAULT_INJECTED
from tests.e2e.pipeline import Pipeline
from tests.e2e.reference import Reference
from tests.e2e.test_clickhouse import RECOMPUTED_SQL, ROLLUP_SQL, ROW_SQL
from tests.e2e.test_crash_safety import SEED, build_workload, emit_in_order, workload_time
from tests.helpers import run_metering

pytestmark = pytest.mark.stack

EVENTS = 12_000
SMALL_BATCHES = {"METERING_SINK_BATCH_ROWS": "700", "METERING_SINK_BATCH_SECONDS": "0.2"}


def expected_member_spend(reference: Reference, org: str, month: str) -> list[queries.Spend]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row_org, user, _model, _surface, row_month, cost, billed in reference.rows.values():
        if row_org == org and row_month == month:
            entry = totals[user]
            entry[0] += 1
            entry[1] += cost
            entry[2] += billed
    ordered = sorted(totals.items(), key=lambda item: (-item[1][2], item[0]))
    return [queries.Spend(user, *numbers) for user, numbers in ordered]


def test_sink_killed_between_insert_and_commit_and_at_random(pipeline: Pipeline) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    now = workload_time()
    month = now.strftime("%Y-%m")
    accounts, usage, reference = build_workload(rng, now, events=EVENTS)
    pipeline.start_worker()  # the processors only: this test runs the sink itself
    emit_in_order(pipeline, accounts, usage, list(reference.orgs))

    # Killed right after storing a batch, before committing its offsets
    for _ in range(4):
        batches = rng.randint(2, 4)
        sink = pipeline.spawn_crashing(Point.SINK_BATCH_STORED, batches, "sink", **SMALL_BATCHES)
        assert sink.wait(timeout=120) == EXIT_FAULT_INJECTED
    # ... and at random moments
    for _ in range(3):
        sink = pipeline.spawn("sink", **SMALL_BATCHES)
        time.sleep(rng.uniform(0.5, 3.0))
        sink.send_signal(signal.SIGKILL)
        sink.wait(timeout=30)

    pipeline.wait_caught_up()
    catch_up = pipeline.spawn("sink", "--once")
    assert catch_up.wait(timeout=300) == 0
    assert pipeline.sink_lag() == 0

    with Store(pipeline.settings.clickhouse_url) as store:
        rows = store.rows(ROW_SQL)
        assert len(rows) == len(reference.rows)
        assert {row[0]: tuple(row[1:]) for row in rows} == reference.rows
        assert sorted(store.rows(ROLLUP_SQL)) == sorted(store.rows(RECOMPUTED_SQL))
        assert store.rows("SELECT count() FROM metering.account_events") == [(len(accounts),)]
        for org in reference.orgs:
            assert queries.member_spend(store, org, month) == expected_member_spend(
                reference, org, month
            )


def test_a_second_embedded_owner_is_refused_with_the_owner_pid(pipeline: Pipeline) -> None:
    """chDB locks its directory; we say who holds it and what to do."""
    with Store(pipeline.settings.clickhouse_url):
        result = run_metering("sink", "--once", **pipeline.env())
    assert result.returncode == 1
    assert f"in use by PID {os.getpid()}" in result.stderr
    assert "METERING_CLICKHOUSE_URL" in result.stderr
