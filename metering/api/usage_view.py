"""The usage view (R18): an org's month-to-date spend, caps and status, and each
member's — read from Redis in one round trip (`read_org_state`: the enforcement state
the gate decides from, so a block shows the moment it happens). Members see only their
own row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from redis.asyncio import Redis

from billing.enforcement import cap_reached, decide
from billing.pricing import PriceBook
from metering.enforcement.org_state import read_org_state
from metering.enforcement.records import month_of
from schemas.account import BillingMode, Plan
from schemas.usage import Surface


class UnknownOrg(LookupError):
    pass


@dataclass(frozen=True)
class MemberUsage:
    user_id: str
    role: str | None  # None: spent this month but is not (or no longer) a member
    seat_type: str | None
    spend_nano_usd: int  # billed this month
    cap_nano_usd: int | None  # None: unlimited
    effective_limit_nano_usd: int | None  # the lower of the member's and the org's cap
    allowed: bool | None  # None for a closed month: status is about now
    reason: str | None
    # Seat-based plans: the seat's monthly allowance and how much of it the month used
    # (R6); None on other plans, and for someone who is not a member.
    allowance_used_nano_usd: int | None = None
    allowance_nano_usd: int | None = None


@dataclass(frozen=True)
class OrgUsage:
    org_id: str
    month: str
    plan: str
    billing_mode: str
    spend_nano_usd: int
    cap_nano_usd: int | None
    cap_reached: bool
    credit_balance_nano_usd: int | None  # self-serve only
    members: list[MemberUsage]

    def only(self, user_id: str) -> OrgUsage:
        """The view a member gets: the org's figures and their own row."""
        return OrgUsage(
            **{**self.__dict__, "members": [m for m in self.members if m.user_id == user_id]}
        )


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


async def load_usage(
    client: Redis, book: PriceBook, org_id: str, month: str, *, now: datetime, prefix: str = ""
) -> OrgUsage:
    state = await read_org_state(client, prefix, org_id, month)
    if state is None:
        raise UnknownOrg(org_id)
    current = month == month_of(now)
    seat_based = state.plan is Plan.SEAT_BASED
    # A closed month's allowance is the one of its first day (year 0000 is a valid
    # YYYY-MM to the API, not to `date`: the earliest day there is).
    as_of = now.date() if current else date(max(int(month[:4]), 1), int(month[5:]), 1)
    caps, org_cap = state.caps_nano_usd, state.org_cap_nano_usd
    rows = []
    for user in sorted(set(state.members) | state.spenders):
        member = state.members.get(user)
        allowance = book.usage_allowance(member.seat, as_of) if member and seat_based else None
        used = state.allowance_used_nano_usd.get(user, 0) if allowance is not None else None
        allowed: bool | None = None
        reason: str | None = None
        if current:
            decision = decide(
                state.gate_state(user, book, now.date()),
                Surface.CHAT_WEB,  # every seat includes chat: status is about caps/credits
            )
            allowed = decision.allowed
            reason = decision.reason.value if decision.reason else None
        rows.append(
            MemberUsage(
                user_id=user,
                role=member.role.value if member else None,
                seat_type=member.seat.value if member else None,
                spend_nano_usd=state.user_spend_nano_usd.get(user, 0),
                cap_nano_usd=caps.get(user),
                effective_limit_nano_usd=_lower(caps.get(user), org_cap),
                allowed=allowed,
                reason=reason,
                allowance_used_nano_usd=used,
                allowance_nano_usd=allowance,
            )
        )
    return OrgUsage(
        org_id=org_id,
        month=month,
        plan=state.plan.value,
        billing_mode=state.billing_mode.value,
        spend_nano_usd=state.org_spend_nano_usd,
        cap_nano_usd=org_cap,
        cap_reached=cap_reached(state.org_spend_nano_usd, org_cap),
        credit_balance_nano_usd=(
            state.balance_nano_usd if state.billing_mode is BillingMode.SELF_SERVE else None
        ),
        members=rows,
    )
