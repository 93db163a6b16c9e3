"""The account fold (`billing.accounts`): R1–R7, R11, R14 as pure transitions."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.accounts import AccountRejection, OrgAccount, Rejected, apply_account_event
from schemas.account import Plan, SeatType
from schemas.validation import parse_account_event

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
USD = 1_000_000_000
_ids = itertools.count()
OWNER = {"user_id": "boss", "role": "primary_owner"}


def event(kind: str, data: dict[str, Any], actor: dict[str, str] | None = OWNER) -> Any:
    return parse_account_event(
        {
            "event_id": f"e{next(_ids)}",
            "type": kind,
            "org_id": "org",
            "actor": actor,
            "occurred_at": "2026-11-01T00:00:00Z",
            "data": data,
        },
        now=NOW,
    )


def fold(*events: Any) -> OrgAccount | Rejected:
    state: OrgAccount | None = None
    for item in events:
        result = apply_account_event(state, item)
        if isinstance(result, Rejected):
            return result
        state = result
    assert state is not None
    return state


def org(plan: str = "usage_based", mode: str = "self_serve", seat: str = "enterprise") -> list[Any]:
    return [
        event(
            "org.created",
            {"plan": plan, "billing_mode": mode, "term_start": "2026-01-01", "seats": {seat: 3}},
            actor=None,
        ),
        event(
            "member.added", {"user_id": "boss", "role": "primary_owner", "seat_type": seat}, None
        ),
        event("member.added", {"user_id": "m", "role": "member", "seat_type": seat}, None),
        event("member.added", {"user_id": "a", "role": "admin", "seat_type": seat}, None),
    ]


def test_only_owners_spend_and_the_role_comes_from_the_member_list() -> None:
    """R14: a member, an admin, a stranger and a member claiming 'owner' are refused a cap
    and a purchase; the primary owner and the system (null actor) may."""
    base = org()
    for actor in (
        {"user_id": "m", "role": "member"},
        {"user_id": "a", "role": "admin"},
        {"user_id": "nobody", "role": "owner"},
        {"user_id": "m", "role": "owner"},
    ):
        cap = fold(*base, event("spend_cap.set", {"user_id": "m", "limit": "1.00"}, actor))
        buy = fold(*base, event("credits.purchased", {"purchase_id": "p", "amount": "5.00"}, actor))
        assert isinstance(cap, Rejected) and cap.reason is AccountRejection.NOT_PERMITTED
        assert isinstance(buy, Rejected) and buy.reason is AccountRejection.NOT_PERMITTED
    ok = fold(
        *base,
        event("spend_cap.set", {"user_id": "m", "limit": "1.00"}),
        event("spend_cap.set", {"user_id": None, "limit": "9.00"}, actor=None),
    )
    assert isinstance(ok, OrgAccount)
    assert ok.user_caps_nano_usd == {"m": USD} and ok.org_cap_nano_usd == 9 * USD
    unlimited = fold(
        *base,
        event("spend_cap.set", {"user_id": "m", "limit": "1.00"}),
        event("spend_cap.set", {"user_id": "m", "limit": None}),
    )
    assert isinstance(unlimited, OrgAccount) and unlimited.user_caps_nano_usd == {}


def test_self_serve_cannot_remove_seats_sales_assisted_waits_for_renewal() -> None:
    """R5: self-serve removal refused; sales-assisted removal applies at renewal."""
    removal = event("seats.removed", {"seat_type": "enterprise", "quantity": 1})
    refused = fold(*org(), removal)
    assert isinstance(refused, Rejected)
    assert refused.reason is AccountRejection.SEAT_REMOVAL_REFUSED
    pending = fold(*org(mode="sales_assisted"), removal)
    assert isinstance(pending, OrgAccount)
    assert pending.seats == {SeatType.ENTERPRISE: 3}
    assert pending.pending_seat_removals == {SeatType.ENTERPRISE: 1}
    renewed = apply_account_event(
        pending, event("contract.renewed", {"term_start": "2027-01-01"}, None)
    )
    assert isinstance(renewed, OrgAccount)
    assert renewed.seats == {SeatType.ENTERPRISE: 2} and renewed.pending_seat_removals == {}


def test_legacy_orgs_migrate_at_renewal_keeping_caps_credits_and_members() -> None:
    """R7: a seat-based org renews into usage-based, every member on an enterprise seat,
    roles, caps and purchases kept."""
    before = fold(
        *org(plan="seat_based", seat="premium"),
        event("credits.purchased", {"purchase_id": "p1", "amount": "20.00"}),
        event("spend_cap.set", {"user_id": "m", "limit": "3.00"}),
    )
    assert isinstance(before, OrgAccount)
    after = apply_account_event(
        before, event("contract.renewed", {"term_start": "2027-01-01"}, None)
    )
    assert isinstance(after, OrgAccount)
    assert after.plan is Plan.USAGE_BASED and after.billing_mode is before.billing_mode
    assert {u: m.seat for u, m in after.members.items()} == dict.fromkeys(
        before.members, SeatType.ENTERPRISE
    )
    assert {u: m.role for u, m in after.members.items()} == {
        u: m.role for u, m in before.members.items()
    }
    assert after.seats == {SeatType.ENTERPRISE: 3}
    assert after.purchases == {"p1": 20 * USD} and after.user_caps_nano_usd == {"m": 3 * USD}
    not_later = apply_account_event(
        after, event("contract.renewed", {"term_start": "2027-01-01"}, None)
    )
    assert (
        isinstance(not_later, Rejected) and not_later.reason is AccountRejection.RENEWAL_NOT_LATER
    )


def test_purchases_are_unique_and_for_self_serve_only() -> None:
    """A purchase id credits once; sales-assisted orgs are billed in arrears, not prepaid."""
    buy = event("credits.purchased", {"purchase_id": "p1", "amount": "5.00"})
    again = event("credits.purchased", {"purchase_id": "p1", "amount": "5.00"})
    twice = fold(*org(), buy, again)
    assert isinstance(twice, Rejected) and twice.reason is AccountRejection.DUPLICATE_PURCHASE
    sales = fold(*org(mode="sales_assisted"), buy)
    assert isinstance(sales, Rejected) and sales.reason is AccountRejection.NOT_SELF_SERVE


ACTORS = [None, OWNER, {"user_id": "m", "role": "member"}]
EVENTS = st.one_of(
    st.builds(
        lambda q, a: event("seats.added", {"seat_type": "enterprise", "quantity": q}, a),
        st.integers(1, 5),
        st.sampled_from(ACTORS),
    ),
    st.builds(
        lambda q: event("seats.removed", {"seat_type": "enterprise", "quantity": q}),
        st.integers(1, 5),
    ),
    st.builds(
        lambda p, usd, a: event(
            "credits.purchased", {"purchase_id": f"p{p}", "amount": f"{usd}.00"}, a
        ),
        st.integers(0, 5),
        st.integers(1, 50),
        st.sampled_from(ACTORS),
    ),
    st.builds(
        lambda u, usd: event(
            "spend_cap.set", {"user_id": u, "limit": None if usd is None else f"{usd}.00"}
        ),
        st.sampled_from([None, "m", "ghost"]),
        st.none() | st.integers(0, 20),
    ),
    st.builds(
        lambda u: event(
            "member.added", {"user_id": u, "role": "member", "seat_type": "enterprise"}, None
        ),
        st.sampled_from(["x", "y", "m"]),
    ),
    st.builds(
        lambda u: event(
            "member.removed", {"user_id": u, "role": "member", "seat_type": "enterprise"}, None
        ),
        st.sampled_from(["x", "y", "ghost"]),
    ),
)


@settings(max_examples=200)
@given(st.sampled_from(["self_serve", "sales_assisted"]), st.lists(EVENTS, max_size=25))
def test_folding_never_raises_never_mutates_and_conserves_purchases(
    mode: str, events: list[Any]
) -> None:
    """Any sequence folds without raising; a refused event leaves the state untouched (the
    input object is not mutated either); purchases in the state equal the accepted ones."""
    state = fold(*org(mode=mode))
    assert isinstance(state, OrgAccount)
    accepted_purchases = 0
    for item in events:
        snapshot = copy.deepcopy(state)
        result = apply_account_event(state, item)
        assert state == snapshot  # the fold never mutates its input
        if isinstance(result, Rejected):
            continue
        if item.type == "credits.purchased":
            accepted_purchases += item.data.amount
        state = result
    assert sum(state.purchases.values()) == accepted_purchases
