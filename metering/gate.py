"""The gate: may this member make a request on this surface now? (R15)

Product services call it before every model request, so it reads Redis only, in one
pipelined round trip, and decides with the pure rules of `billing.enforcement`. The
month is the clock's current UTC month: a new month starts with zero spend, which lifts
cap blocks the moment it begins (R16).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from redis.asyncio import Redis

from billing.enforcement import Decision, GateState, decide
from billing.pricing import PriceBook
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import month_of
from metering.enforcement.state_codec import decode_member
from schemas.account import BillingMode, Plan
from schemas.usage import Surface


class UnknownOrgError(LookupError):
    """No org.created has been applied for this org."""


def _int(raw: bytes | None) -> int:
    return int(raw) if raw is not None else 0


class Gate:
    def __init__(
        self, client: Redis, book: PriceBook, clock: Callable[[], datetime], prefix: str = ""
    ) -> None:
        self._redis = client
        self._book = book
        self._clock = clock
        self._prefix = prefix

    async def check(self, org_id: str, user_id: str, surface: Surface | str) -> Decision:
        """Raises UnknownOrgError, and ValueError for a surface that does not exist."""
        surface = Surface(surface)
        now = self._clock()
        keys = OrgKeys(self._prefix, org_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(keys.meta, ["plan", "billing_mode", "extra_usage", "org_cap"])
        pipe.hget(keys.members, user_id)
        pipe.hget(keys.caps, user_id)
        pipe.get(keys.balance)
        pipe.hmget(keys.spend(month_of(now)), ["org", f"u:{user_id}", f"a:{user_id}"])
        meta, member_raw, cap, balance, spend = await pipe.execute()
        plan, billing_mode, extra_usage, org_cap = meta
        if plan is None:
            raise UnknownOrgError(org_id)
        member = decode_member(member_raw)
        allowance = self._book.usage_allowance(member.seat, now.date()) if member else 0
        state = GateState(
            plan=Plan(plan.decode()),
            billing_mode=BillingMode(billing_mode.decode()),
            extra_usage=extra_usage == b"1",
            seat=member.seat if member else None,
            org_spend_nano_usd=_int(spend[0]),
            org_cap_nano_usd=int(org_cap) if org_cap is not None else None,
            user_spend_nano_usd=_int(spend[1]),
            user_cap_nano_usd=int(cap) if cap is not None else None,
            credit_balance_nano_usd=_int(balance),
            allowance_used_nano_usd=_int(spend[2]),
            allowance_nano_usd=allowance,
        )
        return decide(state, surface)
