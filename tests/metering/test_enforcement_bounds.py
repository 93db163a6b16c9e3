"""The enforcement scripts never let money leave its bounds, and one org's script error
never stops the others (issue 20): the processors against the real Redis.

- usage that would take a month's spend or a balance past MAX_TOTAL_NANO_USD is
  dead-lettered `amount_out_of_range`, counting nothing — and so is its replay;
- an event dearer than MAX_EVENT_COST_NANO_USD (an absurd price book) likewise;
- a script Redis refuses for one org (here: a key of the wrong type) dead-letters that
  org's events `enforcement_failed` while the other orgs of the batch count;
- credits that would take the balance past its bound are refused by the account script
  before it writes anything (a Lua script is not rolled back on error)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from billing.pricing import PriceBook, default_price_book_text
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import SourceRecord
from metering.enforcement.usage_processor import UsageProcessor
from metering.topics import DEFAULT_TOPICS
from tests.conftest import RunningStack
from tests.e2e.scenario import account, new_org, spend, usage

pytestmark = pytest.mark.stack

USD = 10**9
MAX_TOTAL_NANO_USD = 10**18  # schemas.money.MAX_TOTAL_NANO_USD, the documented bound
NOW = datetime.now(UTC)
MONTH = NOW.strftime("%Y-%m")
BOOK = PriceBook.from_json(default_price_book_text())
_offsets = itertools.count(1000)


def records(topic: str, *events: dict[str, Any]) -> list[SourceRecord]:
    # Received now (not when the module was imported: in a long run the events, stamped
    # a minute before *their* creation, would be later than that by far — future events).
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    return [
        SourceRecord(topic, 0, next(_offsets), e["org_id"].encode(), json.dumps(e).encode(), stamp)
        for e in events
    ]


def run(
    prefix: str,
    redis_url: str,
    kind: str,
    batch: Sequence[SourceRecord],
    book: PriceBook = BOOK,
) -> BatchResult:
    if kind == "usage":  # synchronous: it runs in the usage hot path's thread
        with redis.Redis.from_url(redis_url) as sync_client:
            return UsageProcessor(sync_client, book, prefix, DEFAULT_TOPICS).process(batch)

    async def go() -> BatchResult:
        client = AsyncRedis.from_url(redis_url)
        try:
            return await AccountProcessor(client, book, prefix, DEFAULT_TOPICS).process(batch)
        finally:
            await client.aclose()

    return asyncio.run(go())


def dead(result: BatchResult) -> list[tuple[str, str | None]]:
    letters = [
        json.loads(m.value or b"")
        for m in result.outputs
        if m.topic == DEFAULT_TOPICS.usage_deadletter
    ]
    return [(d["reason"], d["event_id"]) for d in letters]


@pytest.fixture
def orgs(
    stack: RunningStack, redis_prefix: tuple[redis.Redis, str]
) -> tuple[redis.Redis, str, str]:
    client, prefix = redis_prefix
    redis_url = stack.settings.redis_url
    events = new_org("org_x", members=("u1",), credits="100.00") + new_org(
        "org_y", members=("u1",), credits="100.00"
    )
    result = run(prefix, redis_url, "account", records(DEFAULT_TOPICS.account_events, *events))
    assert result.accepted == len(events), dead(result)
    return client, prefix, redis_url


def snapshot(client: redis.Redis, prefix: str, org: str) -> dict[str, Any]:
    keys = OrgKeys(prefix, org)
    return {"spend": client.hgetall(keys.spend(MONTH)), "balance": client.get(keys.balance)}


def test_usage_past_the_spend_bound_is_refused_and_counts_nothing(
    orgs: tuple[redis.Redis, str, str],
) -> None:
    client, prefix, url = orgs
    keys = OrgKeys(prefix, "org_x")
    # The org has spent all but 99 cents of the largest month there is
    client.hset(keys.spend(MONTH), mapping={"org": str(MAX_TOTAL_NANO_USD - 99 * 10**7)})
    before = snapshot(client, prefix, "org_x")
    event = spend("org_x", "u1", 1)
    batch = records(DEFAULT_TOPICS.usage_events, event)
    result = run(prefix, url, "usage", batch)
    assert dead(result) == [("amount_out_of_range", event["event_id"])]
    assert result.accepted == 0
    assert snapshot(client, prefix, "org_x") == before
    # A replay of the same record is refused the same way (its mark says so)
    assert dead(run(prefix, url, "usage", batch)) == [("amount_out_of_range", event["event_id"])]
    assert snapshot(client, prefix, "org_x") == before
    # What still fits is counted, exactly up to the bound
    fits = usage("org_x", "u1", model="claude-haiku-4-5", output_tokens=198_000)  # $0.99
    result = run(prefix, url, "usage", records(DEFAULT_TOPICS.usage_events, fits))
    assert result.accepted == 1 and dead(result) == []
    assert int(client.hget(keys.spend(MONTH), "org") or 0) == MAX_TOTAL_NANO_USD


def test_usage_past_the_balance_bound_is_refused(orgs: tuple[redis.Redis, str, str]) -> None:
    client, prefix, url = orgs
    keys = OrgKeys(prefix, "org_x")
    client.set(keys.balance, str(-MAX_TOTAL_NANO_USD + USD // 2))  # $0.50 left to overdraw
    before = snapshot(client, prefix, "org_x")
    event = spend("org_x", "u1", 1)
    result = run(prefix, url, "usage", records(DEFAULT_TOPICS.usage_events, event))
    assert dead(result) == [("amount_out_of_range", event["event_id"])]
    assert snapshot(client, prefix, "org_x") == before


def test_an_event_dearer_than_any_event_may_be_is_refused(
    orgs: tuple[redis.Redis, str, str],
) -> None:
    client, prefix, url = orgs
    book = json.loads(default_price_book_text())
    book["versions"][0]["models"]["claude-haiku-4-5"]["output"] = "1000000000.00"
    absurd = PriceBook.from_json(json.dumps(book))
    event = usage("org_x", "u1", model="claude-haiku-4-5", output_tokens=10_000_000)
    before = snapshot(client, prefix, "org_x")
    result = run(prefix, url, "usage", records(DEFAULT_TOPICS.usage_events, event), absurd)
    assert dead(result) == [("amount_out_of_range", event["event_id"])]
    assert snapshot(client, prefix, "org_x") == before


def test_a_script_error_for_one_org_dead_letters_its_events_and_the_rest_counts(
    orgs: tuple[redis.Redis, str, str],
) -> None:
    client, prefix, url = orgs
    broken = OrgKeys(prefix, "org_x")
    client.delete(broken.balance)
    client.hset(broken.balance, "oops", "1")  # a key of the wrong type: GET fails
    events = [spend("org_x", "u1", 1), spend("org_y", "u1", 2), spend("org_x", "u1", 3)]
    result = run(prefix, url, "usage", records(DEFAULT_TOPICS.usage_events, *events))
    assert sorted(dead(result)) == sorted(
        [
            ("enforcement_failed", events[0]["event_id"]),
            ("enforcement_failed", events[2]["event_id"]),
        ]
    )
    assert result.accepted == 1
    assert int(client.hget(OrgKeys(prefix, "org_y").spend(MONTH), "org") or 0) == 2 * USD
    assert client.hget(broken.spend(MONTH), "org") is None  # nothing of org_x counted


def test_credits_past_the_balance_bound_are_refused_before_any_write(
    orgs: tuple[redis.Redis, str, str],
) -> None:
    client, prefix, url = orgs
    keys = OrgKeys(prefix, "org_x")
    # A balance the rules could not have produced (9.2e18 nano: INCRBY would overflow)
    client.set(keys.balance, str(2**63 - 10**9))
    state_before = client.get(keys.account)
    offsets_before = client.hgetall(keys.offsets)
    purchase = account("org_x", "credits.purchased", {"purchase_id": "p-big", "amount": "5.00"})
    other = account("org_y", "credits.purchased", {"purchase_id": "p-y", "amount": "5.00"})
    result = run(prefix, url, "account", records(DEFAULT_TOPICS.account_events, purchase, other))
    assert dead(result) == [("enforcement_failed", purchase["event_id"])]
    assert client.get(keys.account) == state_before
    assert client.hgetall(keys.offsets) == offsets_before
    assert client.get(keys.balance) == str(2**63 - 10**9).encode()
    assert int(client.get(OrgKeys(prefix, "org_y").balance) or 0) == 105 * USD


def test_the_bounds_leave_ordinary_usage_alone(orgs: tuple[redis.Redis, str, str]) -> None:
    client, prefix, url = orgs
    events = [spend("org_x", "u1", 1, at=NOW - timedelta(seconds=i)) for i in range(50)]
    result = run(prefix, url, "usage", records(DEFAULT_TOPICS.usage_events, *events))
    assert result.accepted == 50 and dead(result) == []
    assert int(client.get(OrgKeys(prefix, "org_x").balance) or 0) == 50 * USD
