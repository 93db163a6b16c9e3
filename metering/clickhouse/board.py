"""The members board: month-to-date spend per member from ClickHouse, joined with what
Redis knows now — each member's cap and whether the gate lets them through (R18).

Spend is ClickHouse's (what the sink has stored); cap and status are live, from the
enforcement state, so a block shows the moment it happens. Status is the gate's answer
for chat, which every seat includes, so a seat's surface restrictions do not show as a
block here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from billing.enforcement import Decision
from billing.pricing import PriceBook
from metering.clickhouse.queries import member_spend
from metering.clickhouse.store import Store
from metering.enforcement.keys import OrgKeys
from metering.gate import Gate, UnknownOrgError
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
    store: Store, client: Redis, gate: Gate, org_id: str, month: str, *, prefix: str = ""
) -> list[MemberStatus]:
    """Every member (and anyone who spent this month), biggest spender first."""
    spends = {s.key: s for s in await asyncio.to_thread(member_spend, store, org_id, month)}
    keys = OrgKeys(prefix, org_id)
    pipe = client.pipeline(transaction=False)
    pipe.hkeys(keys.members)
    pipe.hgetall(keys.caps)
    raw_members, raw_caps = await pipe.execute()
    caps = {user.decode(): int(cap) for user, cap in raw_caps.items()}
    users = sorted(set(spends) | {m.decode() for m in raw_members})

    async def status(user: str) -> Decision | None:
        try:
            return await gate.check(org_id, user, Surface.CHAT_WEB)
        except UnknownOrgError:
            return None

    decisions = await asyncio.gather(*(status(user) for user in users))
    board = []
    for user, decision in zip(users, decisions, strict=True):
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
    redis_url: str, book: PriceBook, store: Store, org_id: str, month: str, *, prefix: str = ""
) -> list[MemberStatus]:
    """`member_board` for synchronous callers (the CLI), with a client of its own."""

    async def read() -> list[MemberStatus]:
        client = Redis.from_url(redis_url)
        try:
            gate = Gate(client, book, lambda: datetime.now(UTC), prefix)
            return await member_board(store, client, gate, org_id, month, prefix=prefix)
        finally:
            await client.aclose()

    return asyncio.run(read())
