"""The org state reader on real Redis: the org's keys as the account processor writes
them (meta, members, caps, balance) and a month's spend hash, read back as one typed
`OrgState`; its gate state agrees with what the gate's own script reads, and its spend
snapshot with the one built from the folded account."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from billing.accounts import Member
from billing.enforcement import BlockReason, GateState, decide
from billing.notifications import UserSpend
from billing.pricing import PriceBook, default_price_book_text
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.keys import OrgKeys
from metering.enforcement.org_state import (
    REPLIES_PER_ORG,
    OrgState,
    org_state_from_replies,
    queue_org_state,
    read_org_state,
)
from metering.enforcement.records import SourceRecord
from metering.enforcement.state_codec import decode_account
from metering.gate import Gate
from metering.topics import TopicNames
from schemas.account import BillingMode, Plan, Role, SeatType
from schemas.usage import Surface
from tests.conftest import RunningStack

BOOK = PriceBook.from_json(default_price_book_text())
TOPICS = TopicNames("t.")
ORG = "org_state"
MONTH = "2026-05"
DAY = date(2026, 5, 20)
NOW = datetime(2026, 5, 20, 12, tzinfo=UTC)
USD = 1_000_000_000  # nano-USD
# The default price book's monthly seat allowances (R6).
STANDARD_ALLOWANCE, PREMIUM_ALLOWANCE = 25 * USD, 125 * USD

STANDARD, PREMIUM = SeatType.STANDARD.value, SeatType.PREMIUM.value

T = TypeVar("T")


def record(offset: int, kind: str, data: dict[str, Any]) -> SourceRecord:
    owner = {"user_id": "owner", "role": "primary_owner"}
    value = {
        "event_id": f"{ORG}-{offset}",
        "type": kind,
        "org_id": ORG,
        "occurred_at": "2026-05-02T10:00:00Z",
        "actor": None if kind in {"org.created", "member.added"} else owner,
        "data": data,
    }
    received_ms = int(datetime(2026, 5, 2, 10, 1, tzinfo=UTC).timestamp() * 1000)
    return SourceRecord(
        TOPICS.account_events, 0, offset, ORG.encode(), json.dumps(value).encode(), received_ms
    )


# A seat-based, self-serve org: two members with seats, an org cap and ann's own cap,
# thresholds of its own and one credit purchase.
HISTORY = [
    record(
        0,
        "org.created",
        {
            "plan": "seat_based",
            "billing_mode": "self_serve",
            "term_start": "2026-05-01",
            "seats": {"premium": 1, "standard": 1},
            "notification_thresholds": ["0.25", "0.9"],
        },
    ),
    record(1, "member.added", {"user_id": "owner", "role": "primary_owner", "seat_type": PREMIUM}),
    record(2, "member.added", {"user_id": "ann", "role": "member", "seat_type": STANDARD}),
    record(3, "spend_cap.set", {"user_id": None, "limit": "100.00"}),
    record(4, "spend_cap.set", {"user_id": "ann", "limit": "20.00"}),
    record(5, "credits.purchased", {"purchase_id": "pay-1", "amount": "50.00"}),
]

# The month's spend hash (`OrgKeys.spend`), as the usage script leaves it: ann has used
# her allowance up and spent past her cap; "gone" spent and is no member any more.
SPEND = {
    "org": 24 * USD,
    "u:owner": 0,
    "a:owner": 3 * USD,
    "t:owner": 3 * USD,
    "u:ann": 21 * USD,
    "a:ann": STANDARD_ALLOWANCE,
    "t:ann": 46 * USD,
    "u:gone": 3 * USD,
    "t:gone": 3 * USD,
}


def run(stack: RunningStack, work: Callable[[AsyncRedis], Awaitable[T]]) -> T:
    async def go() -> T:
        client = AsyncRedis.from_url(stack.settings.redis_url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def seeded(stack: RunningStack, redis_prefix: tuple[redis.Redis, str]) -> tuple[redis.Redis, str]:
    """The org's account applied by the account processor, and its spend of MONTH; the
    balance is the purchase less what the usage script drew (the billed spend)."""
    client, prefix = redis_prefix

    async def apply(async_client: AsyncRedis) -> None:
        result = await AccountProcessor(async_client, BOOK, prefix, TOPICS).process(HISTORY)
        assert result.accepted == len(HISTORY), result.dead_letter_reasons

    run(stack, apply)
    keys = OrgKeys(prefix, ORG)
    client.hset(keys.spend(MONTH), mapping={k: str(v) for k, v in SPEND.items()})
    client.hset(keys.spend("2026-04"), mapping={"org": str(7 * USD), "u:ann": str(7 * USD)})
    client.incrby(keys.balance, -24 * USD)
    return client, prefix


def test_an_unknown_org_is_none(stack: RunningStack, redis_prefix: tuple[redis.Redis, str]) -> None:
    client, prefix = redis_prefix
    keys = OrgKeys(prefix, "org_nobody")
    # Stray keys without a plan in meta (no org.created applied) are no org either.
    client.hset(keys.spend(MONTH), "org", "5")
    client.hset(keys.meta, "org_cap", "5")
    assert run(stack, lambda c: read_org_state(c, prefix, "org_nobody", MONTH)) is None


def test_the_state_reads_as_the_processors_wrote_it(
    stack: RunningStack, seeded: tuple[redis.Redis, str]
) -> None:
    _client, prefix = seeded
    state = run(stack, lambda c: read_org_state(c, prefix, ORG, MONTH))
    assert state is not None
    assert (state.org_id, state.month, state.plan, state.billing_mode, state.extra_usage) == (
        ORG,
        MONTH,
        Plan.SEAT_BASED,
        BillingMode.SELF_SERVE,
        False,
    )
    assert state.org_cap_nano_usd == 100 * USD
    assert state.members == {
        "owner": Member(SeatType.PREMIUM, Role.PRIMARY_OWNER),
        "ann": Member(SeatType.STANDARD, Role.MEMBER),
    }
    assert state.caps_nano_usd == {"ann": 20 * USD}
    assert state.balance_nano_usd == 26 * USD
    assert state.thresholds == (Decimal("0.25"), Decimal("0.9"))
    assert state.purchases == 1
    assert state.org_spend_nano_usd == 24 * USD
    assert state.user_spend_nano_usd == {"owner": 0, "ann": 21 * USD, "gone": 3 * USD}
    assert state.allowance_used_nano_usd == {"owner": 3 * USD, "ann": STANDARD_ALLOWANCE}
    assert state.user_total_nano_usd == {"owner": 3 * USD, "ann": 46 * USD, "gone": 3 * USD}
    assert state.spenders == {"owner", "ann", "gone"}

    # Another month: the same account, that month's spend only.
    april = run(stack, lambda c: read_org_state(c, prefix, ORG, "2026-04"))
    assert april is not None
    assert april.org_spend_nano_usd == 7 * USD
    assert april.user_spend_nano_usd == {"ann": 7 * USD}
    assert (april.members, april.caps_nano_usd) == (state.members, state.caps_nano_usd)
    empty = run(stack, lambda c: read_org_state(c, prefix, ORG, "2026-06"))
    assert empty is not None
    assert (empty.org_spend_nano_usd, empty.user_spend_nano_usd) == (0, {})


def test_gate_states_are_the_gates(stack: RunningStack, seeded: tuple[redis.Redis, str]) -> None:
    _client, prefix = seeded

    async def read(client: AsyncRedis) -> tuple[OrgState | None, dict[str, GateState | None]]:
        gate = Gate(client, BOOK, lambda: NOW, prefix)
        readings = {u: (await gate.read(ORG, u)).state for u in ("owner", "ann", "gone")}
        return await read_org_state(client, prefix, ORG, MONTH), readings

    state, by_gate = run(stack, read)
    assert state is not None
    ann = state.gate_state("ann", BOOK, DAY)
    assert ann == GateState(
        plan=Plan.SEAT_BASED,
        billing_mode=BillingMode.SELF_SERVE,
        extra_usage=False,
        seat=SeatType.STANDARD,
        org_spend_nano_usd=24 * USD,
        org_cap_nano_usd=100 * USD,
        user_spend_nano_usd=21 * USD,
        user_cap_nano_usd=20 * USD,
        credit_balance_nano_usd=26 * USD,
        allowance_used_nano_usd=STANDARD_ALLOWANCE,
        allowance_nano_usd=STANDARD_ALLOWANCE,
    )
    owner, gone = state.gate_state("owner", BOOK, DAY), state.gate_state("gone", BOOK, DAY)
    assert (owner.seat, owner.user_cap_nano_usd, owner.allowance_nano_usd) == (
        SeatType.PREMIUM,
        None,
        PREMIUM_ALLOWANCE,
    )
    assert (gone.seat, gone.user_spend_nano_usd, gone.allowance_nano_usd) == (None, 3 * USD, 0)
    # The gate reads the same keys through its own script, one member at a time.
    assert by_gate == {u: state.gate_state(u, BOOK, DAY) for u in ("owner", "ann", "gone")}
    decisions = {u: decide(state.gate_state(u, BOOK, DAY), Surface.CHAT_WEB) for u in by_gate}
    assert {u: d.reason for u, d in decisions.items()} == {
        "owner": None,
        "ann": BlockReason.USER_CAP_REACHED,
        "gone": BlockReason.UNKNOWN_MEMBER,
    }


def test_spend_snapshots(stack: RunningStack, seeded: tuple[redis.Redis, str]) -> None:
    client, prefix = seeded
    state = run(stack, lambda c: read_org_state(c, prefix, ORG, MONTH))
    assert state is not None
    first = date(2026, 5, 1)
    snapshot = state.spend_snapshot(BOOK, first)
    assert (snapshot.org_id, snapshot.month, snapshot.plan, snapshot.billing_mode) == (
        ORG,
        MONTH,
        Plan.SEAT_BASED,
        BillingMode.SELF_SERVE,
    )
    assert (snapshot.thresholds, snapshot.purchases, snapshot.extra_usage) == (
        (Decimal("0.25"), Decimal("0.9")),
        1,
        False,
    )
    assert (snapshot.org_spend_nano_usd, snapshot.org_cap_nano_usd) == (24 * USD, 100 * USD)
    assert snapshot.balance_nano_usd == 26 * USD
    assert snapshot.users == {  # every member by default
        "owner": UserSpend(0, None, 3 * USD, PREMIUM_ALLOWANCE),
        "ann": UserSpend(21 * USD, 20 * USD, STANDARD_ALLOWANCE, STANDARD_ALLOWANCE),
    }
    # Only the users asked about, members or not (the usage path's touched users).
    assert state.spend_snapshot(BOOK, first, ["gone", "ann"]).users == {
        "gone": UserSpend(3 * USD, None, 0, 0),
        "ann": snapshot.users["ann"],
    }

    # The account processor's form: the folded account and the spend it read.
    keys = OrgKeys(prefix, ORG)
    account = decode_account(client.get(keys.account))
    assert account is not None
    folded = OrgState.from_account(
        account, MONTH, spend=client.hgetall(keys.spend(MONTH)), balance=client.get(keys.balance)
    )
    assert folded.spend_snapshot(BOOK, first) == snapshot

    # A reading without thresholds (the gate's) makes no snapshot.
    partial = OrgState.from_meta(
        ORG,
        MONTH,
        {"plan": b"seat_based", "billing_mode": b"self_serve", "extra_usage": b"", "org_cap": b""},
        members={},
        caps_nano_usd={},
        balance_nano_usd=0,
    )
    assert partial is not None
    assert partial.gate_state("x", BOOK, DAY).seat is None
    with pytest.raises(ValueError, match="thresholds"):
        partial.spend_snapshot(BOOK, first)


def test_many_orgs_in_one_pipeline(stack: RunningStack, seeded: tuple[redis.Redis, str]) -> None:
    _client, prefix = seeded
    orgs = [ORG, "org_unknown", ORG]
    months = [MONTH, MONTH, "2026-04"]

    async def read(client: AsyncRedis) -> tuple[list[OrgState | None], list[OrgState | None]]:
        pipe = client.pipeline(transaction=False)
        for org_id, month in zip(orgs, months, strict=True):
            queue_org_state(pipe, prefix, org_id, month)
        replies = await pipe.execute()
        assert len(replies) == REPLIES_PER_ORG * len(orgs)
        batched = [
            org_state_from_replies(org_id, month, replies[i * REPLIES_PER_ORG :][:REPLIES_PER_ORG])
            for i, (org_id, month) in enumerate(zip(orgs, months, strict=True))
        ]
        one_by_one = [
            await read_org_state(client, prefix, org_id, month)
            for org_id, month in zip(orgs, months, strict=True)
        ]
        return batched, one_by_one

    batched, one_by_one = run(stack, read)
    assert batched == one_by_one
    assert [s is None for s in batched] == [False, True, False]
