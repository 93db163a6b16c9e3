"""The sink when ClickHouse refuses something (issue 20), against real Kafka and a real
embedded store: a row ClickHouse cannot take is dead-lettered (`unstorable_record`), as
is a record that is not an account outcome (`invalid_outcome_record`), and the rest of
its batch is stored; a batch that fails (here: the ledger table cannot be written for a
while) is retried in place until it stores every account outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from metering.clickhouse.sink import ClickHouseSink
from metering.clickhouse.store import Store
from metering.enforcement.records import priced_json
from schemas.validation import encode_event, parse_usage_event
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import new_org, spend
from tests.e2e.test_clickhouse import RECOMPUTED_SQL, ROLLUP_SQL

pytestmark = pytest.mark.stack

ORG = "org_sink"


@pytest.fixture
def pipeline(stack: RunningStack, tmp_path: Path) -> Iterator[Pipeline]:
    created = new_pipeline(stack.settings, tmp_path)
    yield created
    cleanup(created)


def priced(event_id: str, cost_nano_usd: int, offset: int) -> bytes:
    event = parse_usage_event(
        spend(ORG, "u1", 1, event_id=event_id, at=datetime.now(UTC) - timedelta(minutes=1)),
        now=datetime.now(UTC),
    )
    return priced_json(
        encode_event(event),
        cost_nano_usd=cost_nano_usd,
        included_nano_usd=0,
        price_version=date(2025, 1, 1),
        partition=0,
        offset=offset,
    )


def retries() -> float:
    return REGISTRY.get_sample_value("metering_sink_batch_retries_total") or 0.0


def test_a_row_clickhouse_refuses_is_dead_lettered_and_the_rest_stored(
    pipeline: Pipeline,
) -> None:
    accounts = new_org(ORG, members=("u1",))
    pipeline.send_outcomes(*accounts)
    pipeline.send_raw(pipeline.topics.account_outcomes, [b'{"event": "oops"}'], ORG.encode())
    pipeline.send_raw(
        pipeline.topics.usage_priced,
        [priced("good-1", 10**9, 1), priced("huge", 10**20, 2), priced("good-2", 2 * 10**9, 3)],
        key=ORG.encode(),
    )
    with Store(pipeline.settings.clickhouse_url) as store:
        ClickHouseSink(pipeline.settings, store).run_until_caught_up(timeout_s=120)
        stored = store.rows("SELECT event_id FROM metering.usage_events ORDER BY event_id")
        ledger = store.rows("SELECT count() FROM metering.account_events")
        assert sorted(store.rows(ROLLUP_SQL)) == sorted(store.rows(RECOMPUTED_SQL))
    assert stored == [("good-1",), ("good-2",)]
    assert ledger == [(len(accounts),)]
    pipeline.wait_for(lambda p: len(p.dead()) >= 2, what="the dead letters")
    letters = {letter["reason"]: letter for letter in pipeline.dead()}
    assert sorted(letters) == ["invalid_outcome_record", "unstorable_record"]
    assert letters["unstorable_record"]["source_topic"] == pipeline.topics.usage_priced
    assert '"huge"' in letters["unstorable_record"]["payload"]
    assert letters["invalid_outcome_record"]["source_topic"] == pipeline.topics.account_outcomes


def test_a_failed_batch_is_retried_and_stores_its_account_outcomes(pipeline: Pipeline) -> None:
    accounts = new_org(ORG, members=("u1",))
    with Store(pipeline.settings.clickhouse_url) as store:
        sink = ClickHouseSink(pipeline.settings, store)  # migrated
        # The ledger can be read but not written: every insert into it fails
        store.command("RENAME TABLE metering.account_events TO metering.account_events_away")
        store.command(
            "CREATE VIEW metering.account_events AS SELECT * FROM metering.account_events_away"
        )
        pipeline.send_outcomes(*accounts)
        pipeline.send_raw(pipeline.topics.usage_priced, [priced("u-1", 10**9, 1)], ORG.encode())
        before = retries()
        stop = threading.Event()
        thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while retries() < before + 2:
                assert thread.is_alive(), "the sink stopped on the failed insert"
                assert time.monotonic() < deadline, "the sink never tried to store"
                time.sleep(0.1)
            store.command("DROP VIEW metering.account_events")
            store.command("RENAME TABLE metering.account_events_away TO metering.account_events")
            while pipeline.sink_lag() > 0:
                assert thread.is_alive(), "the sink stopped"
                assert time.monotonic() < deadline, "the sink did not catch up"
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join(timeout=30)
        ledger = store.rows(
            "SELECT event_id, status FROM metering.account_events FINAL ORDER BY event_id"
        )
        usage = store.rows("SELECT event_id FROM metering.usage_events")
        assert sorted(store.rows(ROLLUP_SQL)) == sorted(store.rows(RECOMPUTED_SQL))
    assert ledger == sorted((e["event_id"], "accepted") for e in accounts)
    assert usage == [("u-1",)]
