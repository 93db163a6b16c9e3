"""Usage de-duplication marks stay bounded (real Redis, the usage processor driven with
the broker append times and worker clock of the test's choosing):

- an event older than the window when its record reached the broker is dead-lettered
  `event_too_old`, and one just inside it counts;
- marks live per org and month of `occurred_at`, with an expiry after the window, as a
  fixed-size field; a duplicate and a replay are still recognised there, and an id
  re-sent with an `occurred_at` in another month is still a conflict;
- a batch appended after a month's marks stopped being needed drops them;
- a record whose month's marks may be gone by the worker's clock is refused, not
  counted a second time.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from billing.pricing import PriceBook, default_price_book_text
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import SourceRecord
from metering.enforcement.usage_marks import (
    droppable_months,
    expire_at,
    live_months,
    mark_field,
    months_between,
    needed_until,
)
from metering.enforcement.usage_processor import UsageProcessor
from metering.topics import DEFAULT_TOPICS
from tests.conftest import RunningStack
from tests.e2e.scenario import new_org, spend
from tests.metering.test_enforcement_bounds import dead, records, run

pytestmark = pytest.mark.stack

ORG = "org_m"
AGE = timedelta(days=35)
_offsets = itertools.count()


def appended(at: datetime, *events: dict[str, Any]) -> list[SourceRecord]:
    """Usage records as the broker would have stamped them at `at`."""
    stamp = int(at.timestamp() * 1000)
    return [
        SourceRecord(
            DEFAULT_TOPICS.usage_events,
            0,
            next(_offsets),
            ORG.encode(),
            json.dumps(e).encode(),
            stamp,
        )
        for e in events
    ]


def process(
    client: redis.Redis, prefix: str, batch: list[SourceRecord], clock: datetime
) -> BatchResult:
    book = PriceBook.from_json(default_price_book_text())
    processor = UsageProcessor(client, book, prefix, DEFAULT_TOPICS, clock=lambda: clock)
    return processor.process(batch)


@pytest.fixture
def org(stack: RunningStack, redis_prefix: tuple[redis.Redis, str]) -> tuple[redis.Redis, str]:
    client, prefix = redis_prefix
    events = new_org(ORG, members=("u1",), credits="1000.00")
    result = run(
        prefix, stack.settings.redis_url, "account", records(DEFAULT_TOPICS.account_events, *events)
    )
    assert result.accepted == len(events), dead(result)
    return client, prefix


def org_spend(client: redis.Redis, prefix: str, month: str) -> int:
    return int(client.hget(OrgKeys(prefix, ORG).spend(month), "org") or 0)


def test_an_event_older_than_the_window_is_refused_and_one_just_inside_counts(
    org: tuple[redis.Redis, str],
) -> None:
    client, prefix = org
    at = datetime(2026, 12, 20, 12, tzinfo=UTC)
    old = spend(ORG, "u1", 1, at=at - AGE - timedelta(minutes=1))
    inside = spend(ORG, "u1", 2, at=at - AGE + timedelta(minutes=1))
    result = process(client, prefix, appended(at, old, inside), clock=at)
    assert dead(result) == [("event_too_old", old["event_id"])]
    assert result.accepted == 1
    assert org_spend(client, prefix, "2026-11") == 2 * 10**9


def test_marks_are_per_month_fixed_size_expire_and_still_recognise_repeats(
    org: tuple[redis.Redis, str],
) -> None:
    client, prefix = org
    keys = OrgKeys(prefix, ORG)
    at = datetime(2026, 12, 1, 0, 2, tzinfo=UTC)
    november = spend(ORG, "u1", 1, at=datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    first = appended(at, november)
    assert process(client, prefix, first, clock=at).accepted == 1
    mark = client.hget(keys.usage_ids("2026-11"), mark_field(november["event_id"]))
    assert isinstance(mark, bytes) and mark.decode().endswith(f"|0|{first[0].offset}|0")
    assert len(mark_field(november["event_id"])) == 12
    assert client.expiretime(keys.usage_ids("2026-11")) == expire_at("2026-11", AGE)
    assert not client.exists(keys.usage_ids("2026-12"))

    # The record again (a replay) and the event again (a duplicate): counted once
    replay = process(client, prefix, first, clock=at)
    duplicate = process(client, prefix, appended(at, november), clock=at)
    assert dead(replay) == dead(duplicate) == []
    # The same id re-sent a few minutes later, now dated December: a conflict, although
    # December's marks do not have it
    moved = {**november, "occurred_at": "2026-12-01T00:01:00Z"}
    result = process(client, prefix, appended(at, moved), clock=at)
    assert dead(result) == [("event_id_conflict", november["event_id"])]
    assert org_spend(client, prefix, "2026-11") == 10**9
    assert org_spend(client, prefix, "2026-12") == 0


def test_a_later_batch_drops_the_marks_of_a_month_no_event_can_join(
    org: tuple[redis.Redis, str],
) -> None:
    client, prefix = org
    keys = OrgKeys(prefix, ORG)
    # Months ahead of the real clock, so that Redis's own expiry is not what drops them
    january = datetime(2027, 1, 15, tzinfo=UTC)
    event = spend(ORG, "u1", 1, at=january - timedelta(minutes=5))
    assert process(client, prefix, appended(january, event), clock=january).accepted == 1
    assert client.exists(keys.usage_ids("2027-01"))
    # A day before the drop margin has passed: kept
    kept_until = needed_until("2027-01", AGE)  # 2027-03-08
    before = kept_until + timedelta(hours=12)
    later = spend(ORG, "u1", 1, at=before - timedelta(minutes=5))
    assert process(client, prefix, appended(before, later), clock=before).accepted == 1
    assert client.exists(keys.usage_ids("2027-01"))
    # Once the margin has passed: dropped
    after = kept_until + timedelta(days=1, hours=1)
    last = spend(ORG, "u1", 1, at=after - timedelta(minutes=5))
    assert process(client, prefix, appended(after, last), clock=after).accepted == 1
    assert not client.exists(keys.usage_ids("2027-01"))
    assert client.exists(keys.usage_ids("2027-03"))


def test_a_record_whose_month_may_have_lost_its_marks_is_refused_not_counted_twice(
    org: tuple[redis.Redis, str],
) -> None:
    client, prefix = org
    at = datetime(2026, 11, 20, tzinfo=UTC)
    event = spend(ORG, "u1", 1, at=at - timedelta(minutes=5))
    batch = appended(at, event)
    assert process(client, prefix, batch, clock=at).accepted == 1
    # The same record, consumed again months later (a consumer group reset): inside the
    # window by its own append time, but November's marks are gone by the worker's clock
    months_later = datetime(2027, 2, 1, tzinfo=UTC)
    result = process(client, prefix, batch, clock=months_later)
    assert dead(result) == [("event_too_old", event["event_id"])]
    assert org_spend(client, prefix, "2026-11") == 10**9


def test_the_months_an_event_may_be_in_and_the_months_a_batch_drops() -> None:
    assert months_between(datetime(2026, 11, 30, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)) == [
        "2026-11",
        "2026-12",
        "2027-01",
        "2027-02",
    ]
    at = datetime(2027, 3, 5, tzinfo=UTC)
    # 35 days back is 2027-01-29: January is still live, and with it the lookup starts
    assert live_months(at, at, AGE, timedelta(minutes=5)) == ["2027-01", "2027-02", "2027-03"]
    # ... so nothing from January on is dropped; December and November may go
    assert droppable_months(at, AGE) == ["2026-11", "2026-12"]
    assert needed_until("2026-12", AGE) == datetime(2027, 2, 5, tzinfo=UTC)
    assert expire_at("2026-12", AGE) == int(datetime(2027, 2, 6, tzinfo=UTC).timestamp())
