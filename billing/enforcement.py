"""May this user make a request now? The pure decision behind the gate (R6, R10–R16).

The stream processor keeps the numbers (spend, caps, balance, allowance use) in Redis;
this module decides from them. Keeping the rules here, free of I/O, lets the gate, the
processor and the tests' reference model agree by construction on *how* to decide,
while the tests check the numbers independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from billing.entitlements import seat_includes
from schemas.account import BillingMode, Plan, SeatType
from schemas.usage import Surface


class BlockReason(StrEnum):
    """Why a request is refused. Declared in reporting priority order (R15): when
    several apply, the gate reports the first."""

    UNKNOWN_MEMBER = "unknown_member"
    SURFACE_NOT_IN_SEAT = "surface_not_in_seat"
    CREDITS_EXHAUSTED = "credits_exhausted"
    ORG_CAP_REACHED = "org_cap_reached"
    USER_CAP_REACHED = "user_cap_reached"
    SEAT_ALLOWANCE_EXHAUSTED = "seat_allowance_exhausted"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: BlockReason | None = None

    @classmethod
    def allow(cls) -> Decision:
        return cls(True, None)

    @classmethod
    def block(cls, reason: BlockReason) -> Decision:
        return cls(False, reason)


@dataclass(frozen=True, slots=True)
class GateState:
    """Everything the decision needs, for one org, member and month.

    Spends are *billed* spend for the month (on seat-based plans only usage beyond the
    allowance, R6). Caps of None are unlimited. Amounts are nano-dollars.
    """

    plan: Plan
    billing_mode: BillingMode
    extra_usage: bool
    seat: SeatType | None  # None: not a member of the org
    org_spend_nano_usd: int
    org_cap_nano_usd: int | None
    user_spend_nano_usd: int
    user_cap_nano_usd: int | None
    credit_balance_nano_usd: int  # self-serve only; may be negative (R11)
    allowance_used_nano_usd: int  # seat-based only
    allowance_nano_usd: int  # the member's seat allowance this month; 0 if none


def cap_reached(spend_nano_usd: int, cap_nano_usd: int | None) -> bool:
    """Reaching means spend ≥ cap (R15); unlimited is never reached (R16)."""
    return cap_nano_usd is not None and spend_nano_usd >= cap_nano_usd


def allowance_exhausted(state: GateState) -> bool:
    return (
        state.plan is Plan.SEAT_BASED and state.allowance_used_nano_usd >= state.allowance_nano_usd
    )


def blocking_reasons(state: GateState, surface: Surface) -> list[BlockReason]:
    """Every reason that applies, in priority order."""
    if state.seat is None:
        return [BlockReason.UNKNOWN_MEMBER]
    reasons = []
    if not seat_includes(state.seat, surface):
        reasons.append(BlockReason.SURFACE_NOT_IN_SEAT)
    # Credits pay only for billed usage (R6, R11): on a seat-based seat the next request
    # is billed once the allowance is used up, before that it costs the org nothing.
    next_request_billed = state.plan is Plan.USAGE_BASED or allowance_exhausted(state)
    if (
        state.billing_mode is BillingMode.SELF_SERVE
        and next_request_billed
        and state.credit_balance_nano_usd <= 0
    ):
        reasons.append(BlockReason.CREDITS_EXHAUSTED)
    # Caps compare *billed* spend (R6): on seat-based plans only the extra usage counts.
    if cap_reached(state.org_spend_nano_usd, state.org_cap_nano_usd):
        reasons.append(BlockReason.ORG_CAP_REACHED)
    if cap_reached(state.user_spend_nano_usd, state.user_cap_nano_usd):
        reasons.append(BlockReason.USER_CAP_REACHED)
    if allowance_exhausted(state) and not state.extra_usage:
        reasons.append(BlockReason.SEAT_ALLOWANCE_EXHAUSTED)
    return reasons


def decide(state: GateState, surface: Surface) -> Decision:
    reasons = blocking_reasons(state, surface)
    return Decision.block(reasons[0]) if reasons else Decision.allow()


def split_allowance(
    cost_nano_usd: int, allowance_used_nano_usd: int, allowance_nano_usd: int
) -> tuple[int, int]:
    """(included, extra) parts of an event's cost on a seat-based seat (R6): the part that
    crosses the allowance is extra and billed."""
    remaining = max(0, allowance_nano_usd - allowance_used_nano_usd)
    included = min(cost_nano_usd, remaining)
    return included, cost_nano_usd - included
