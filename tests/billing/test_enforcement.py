"""The gate's decision rules (R6, R10–R16), checked against a reference written from the
SPEC's words, independent of billing.enforcement."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.enforcement import BlockReason, GateState, decide, split_allowance
from billing.thresholds import reached_thresholds, threshold_reached
from schemas.account import BillingMode, Plan, SeatType
from schemas.usage import Surface

USD = 1_000_000_000

BASE = GateState(
    plan=Plan.USAGE_BASED,
    billing_mode=BillingMode.SELF_SERVE,
    extra_usage=False,
    seat=SeatType.ENTERPRISE,
    org_spend_nano_usd=0,
    org_cap_nano_usd=None,
    user_spend_nano_usd=0,
    user_cap_nano_usd=None,
    credit_balance_nano_usd=100 * USD,
    allowance_used_nano_usd=0,
    allowance_nano_usd=0,
)

PRIORITY = [
    "unknown_member",
    "surface_not_in_seat",
    "credits_exhausted",
    "org_cap_reached",
    "user_cap_reached",
    "seat_allowance_exhausted",
]
SEAT_SURFACES = {
    "enterprise": {"chat_web", "chat_desktop", "chat_mobile", "claude_code", "cowork"},
    "chat": {"chat_web", "chat_desktop", "chat_mobile"},
    "chat_claude_code": {"chat_web", "chat_desktop", "chat_mobile", "claude_code"},
    "standard": {"chat_web", "chat_desktop", "chat_mobile"},
    "premium": {"chat_web", "chat_desktop", "chat_mobile", "claude_code"},
}


def reference(state: GateState, surface: str) -> str | None:
    """R15 literally: collect every reason that applies, report the first by priority."""
    applies: set[str] = set()
    if state.seat is None:
        applies.add("unknown_member")
    else:
        if surface not in SEAT_SURFACES[state.seat.value]:
            applies.add("surface_not_in_seat")
        allowance_left = state.allowance_used_nano_usd < state.allowance_nano_usd
        seat_based = state.plan.value == "seat_based"
        would_bill = not seat_based or not allowance_left
        self_serve = state.billing_mode.value == "self_serve"
        if self_serve and would_bill and state.credit_balance_nano_usd <= 0:
            applies.add("credits_exhausted")
        if (
            state.org_cap_nano_usd is not None
            and state.org_spend_nano_usd >= state.org_cap_nano_usd
        ):
            applies.add("org_cap_reached")
        if (
            state.user_cap_nano_usd is not None
            and state.user_spend_nano_usd >= state.user_cap_nano_usd
        ):
            applies.add("user_cap_reached")
        if seat_based and not allowance_left and not state.extra_usage:
            applies.add("seat_allowance_exhausted")
    for reason in PRIORITY:
        if reason in applies:
            return reason
    return None


def test_user_cap_blocks_at_exactly_the_cap() -> None:
    """Reaching means spend ≥ cap: one nano below is allowed, at the cap is blocked."""
    below = replace(BASE, user_spend_nano_usd=10 * USD - 1, user_cap_nano_usd=10 * USD)
    assert decide(below, Surface.CHAT_WEB).allowed
    at = replace(below, user_spend_nano_usd=10 * USD)
    assert decide(at, Surface.CHAT_WEB).reason is BlockReason.USER_CAP_REACHED


def test_org_cap_reported_before_user_cap_and_unlimited_never_blocks() -> None:
    """Both caps reached → org_cap_reached (R15 order); unlimited caps never block (R16)."""
    both = replace(
        BASE,
        org_spend_nano_usd=50 * USD,
        org_cap_nano_usd=50 * USD,
        user_spend_nano_usd=5 * USD,
        user_cap_nano_usd=5 * USD,
    )
    assert decide(both, Surface.COWORK).reason is BlockReason.ORG_CAP_REACHED
    unlimited = replace(both, org_cap_nano_usd=None, user_cap_nano_usd=None)
    assert decide(unlimited, Surface.COWORK).allowed


def test_credits_exhausted_at_zero_and_below_for_self_serve_only() -> None:
    """Self-serve stops at balance 0 (and below, after in-flight events); sales-assisted
    has no balance to exhaust."""
    for balance in (0, -1, -5 * USD):
        empty = replace(BASE, credit_balance_nano_usd=balance)
        assert decide(empty, Surface.CHAT_WEB).reason is BlockReason.CREDITS_EXHAUSTED
        sales = replace(empty, billing_mode=BillingMode.SALES_ASSISTED)
        assert decide(sales, Surface.CHAT_WEB).allowed


def test_surface_outside_the_seat_is_blocked() -> None:
    """A chat seat may not use claude_code or cowork; chat_claude_code may not use cowork."""
    chat = replace(BASE, seat=SeatType.CHAT)
    assert decide(chat, Surface.CLAUDE_CODE).reason is BlockReason.SURFACE_NOT_IN_SEAT
    assert decide(chat, Surface.CHAT_MOBILE).allowed
    coder = replace(BASE, seat=SeatType.CHAT_CLAUDE_CODE)
    assert decide(coder, Surface.CLAUDE_CODE).allowed
    assert decide(coder, Surface.COWORK).reason is BlockReason.SURFACE_NOT_IN_SEAT


def test_seat_allowance_stops_unless_extra_usage() -> None:
    """A standard seat with its 25.00 used is stopped; with extra usage it goes on, and
    then (self-serve) draws on credits, so an empty balance stops it."""
    used_up = replace(
        BASE,
        plan=Plan.SEAT_BASED,
        seat=SeatType.STANDARD,
        billing_mode=BillingMode.SALES_ASSISTED,
        allowance_nano_usd=25 * USD,
        allowance_used_nano_usd=25 * USD,
    )
    assert decide(used_up, Surface.CHAT_WEB).reason is BlockReason.SEAT_ALLOWANCE_EXHAUSTED
    assert decide(replace(used_up, extra_usage=True), Surface.CHAT_WEB).allowed
    self_serve_empty = replace(
        used_up, extra_usage=True, billing_mode=BillingMode.SELF_SERVE, credit_balance_nano_usd=0
    )
    assert decide(self_serve_empty, Surface.CHAT_WEB).reason is BlockReason.CREDITS_EXHAUSTED
    within = replace(self_serve_empty, allowance_used_nano_usd=24 * USD)
    assert decide(within, Surface.CHAT_WEB).allowed  # included usage costs the org nothing


def test_unknown_member_trumps_everything() -> None:
    """A user the org does not list is refused as unknown_member whatever else holds."""
    stranger = replace(BASE, seat=None, credit_balance_nano_usd=0, org_cap_nano_usd=0)
    assert decide(stranger, Surface.CHAT_WEB).reason is BlockReason.UNKNOWN_MEMBER


amounts = st.integers(min_value=-10 * USD, max_value=100 * USD)
caps = st.none() | st.integers(min_value=0, max_value=100 * USD)
states = st.builds(
    GateState,
    plan=st.sampled_from(Plan),
    billing_mode=st.sampled_from(BillingMode),
    extra_usage=st.booleans(),
    seat=st.none() | st.sampled_from(SeatType),
    org_spend_nano_usd=st.integers(min_value=0, max_value=100 * USD),
    org_cap_nano_usd=caps,
    user_spend_nano_usd=st.integers(min_value=0, max_value=100 * USD),
    user_cap_nano_usd=caps,
    credit_balance_nano_usd=amounts,
    allowance_used_nano_usd=st.integers(min_value=0, max_value=200 * USD),
    allowance_nano_usd=st.sampled_from([0, 25 * USD, 125 * USD]),
)


@given(states, st.sampled_from(Surface))
def test_decision_matches_the_reference(state: GateState, surface: Surface) -> None:
    """For any state, the decision and its reason equal the literal reading of R15."""
    decision = decide(state, surface)
    expected = reference(state, surface.value)
    assert decision.allowed is (expected is None)
    assert (decision.reason.value if decision.reason else None) == expected


@given(
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
)
def test_allowance_split_conserves_cost(cost: int, used: int, allowance: int) -> None:
    """included + extra = cost; included never exceeds what was left of the allowance."""
    included, extra = split_allowance(cost, used, allowance)
    assert included + extra == cost
    assert 0 <= included <= max(0, allowance - used)
    assert extra >= 0
    assert extra == 0 or used + included >= allowance


def test_the_part_crossing_the_allowance_is_extra() -> None:
    """R6: 24.00 used of 25.00, an event of 3.00 → 1.00 included, 2.00 extra."""
    assert split_allowance(3 * USD, 24 * USD, 25 * USD) == (1 * USD, 2 * USD)


def test_thresholds_are_exact() -> None:
    """80% of a 10.00 cap is reached at exactly 8.00, not one nano earlier."""
    cap = 10 * USD
    assert not threshold_reached(8 * USD - 1, cap, Decimal("0.8"))
    assert threshold_reached(8 * USD, cap, Decimal("0.8"))
    assert reached_thresholds(9 * USD, cap, [Decimal("1"), Decimal("0.5"), Decimal("0.8")]) == [
        Decimal("0.5"),
        Decimal("0.8"),
    ]
    assert reached_thresholds(10**18, None, [Decimal("0.5")]) == []
    # A cap that is not a multiple of the fraction's denominator: 1/3 of 10 nano.
    assert not threshold_reached(3, 10, Decimal("0.3334"))
    assert threshold_reached(4, 10, Decimal("0.3334"))
