"""The members board: month-to-date spend per member from ClickHouse, joined with what
Redis knows now — each member's cap and whether the gate lets them through (R18).

Spend is ClickHouse's (what the sink has stored); cap and status are live, from the
enforcement state, so a block shows the moment it happens. Status is the gate's answer
for chat, which every seat includes, so a seat's surface restrictions do not show as a
block here: the gate's rules (`billing.enforcement.decide`) applied to the org's state
read once (`read_org_state`), not one gate call per member."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from billing.enforcement import decide
from billing.pricing import PriceBook
from metering.clickhouse.queries import member_spend
from metering.clickhouse.store import Store
from metering.enforcement.org_state import read_org_state
from metering.enforcement.records import month_of
from metering.redis_clients import async_client
from metering.settings import Settings
from schemas.usage import Surface


@dataclass(frozen=True)
class MemberStatus:
    user_id: str
    events: int
    billed_nano_usd: int
    cap_nano_usd: int | None  # None: unlimited
    allowed: bool | None  # None: Redis has no state for the org (not created, or flushed)
    reason: str | None


async def member_board(
    store: Store,
    client: Redis,
    book: PriceBook,
    org_id: str,
    month: str,
    *,
    now: datetime,
    prefix: str = "",
) -> list[MemberStatus]:
    """Every member (and anyone who spent in `month`), biggest spender first. Status is
    about `now`, as the gate's is, whatever month the spend is of."""
    spends = {s.key: s for s in await asyncio.to_thread(member_spend, store, org_id, month)}
    state = await read_org_state(client, prefix, org_id, month_of(now))
    caps = state.caps_nano_usd if state else {}
    users = sorted(set(spends) | set(state.members if state else ()))
    board = []
    for user in users:
        decision = (
            decide(state.gate_state(user, book, now.date()), Surface.CHAT_WEB) if state else None
        )
        spend = spends.get(user)
        board.append(
            MemberStatus(
                user_id=user,
                events=spend.events if spend else 0,
                billed_nano_usd=spend.billed_nano_usd if spend else 0,
                cap_nano_usd=caps.get(user),
                allowed=decision.allowed if decision else None,
                reason=decision.reason.value if decision and decision.reason else None,
            )
        )
    return sorted(board, key=lambda m: (-m.billed_nano_usd, m.user_id))


def read_member_board(
    settings: Settings, store: Store, org_id: str, month: str
) -> list[MemberStatus]:
    """`member_board` for synchronous callers (the CLI), with a client of its own."""

    async def read() -> list[MemberStatus]:
        client = async_client(settings)
        try:
            return await member_board(
                store,
                client,
                settings.load_price_book(),
                org_id,
                month,
                now=datetime.now(UTC),
                prefix=settings.redis_prefix,
            )
        finally:
            await client.aclose()

    return asyncio.run(read())
