"""The account fold (`billing.accounts`): R1–R7, R11, R14 as pure transitions."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.accounts import (
    AccountRejection,
    Applied,
    OrgAccount,
    Rejected,
    apply_account_event,
    renewals_due,
)
from billing.pricing import PriceBook, default_price_book_text
from schemas.account import Plan, Role, SeatType
from schemas.validation import parse_account_event

BOOK = PriceBook.from_json(default_price_book_text())

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
USD = 1_000_000_000
_ids = itertools.count()
OWNER = {"user_id": "boss", "role": "primary_owner"}


def event(
    kind: str,
    data: dict[str, Any],
    actor: dict[str, str] | None = OWNER,
    at: str = "2026-11-01T00:00:00Z",
) -> Any:
    return parse_account_event(
        {
            "event_id": f"e{next(_ids)}",
            "type": kind,
            "org_id": "org",
            "actor": actor,
            "occurred_at": at,
            "data": data,
        },
        now=NOW,
    )


def apply(state: OrgAccount | None, item: Any, book: PriceBook = BOOK) -> OrgAccount | Rejected:
    result = apply_account_event(state, item, book)
    return result.state if isinstance(result, Applied) else result


def fold(*events: Any, book: PriceBook = BOOK) -> OrgAccount | Rejected:
    state: OrgAccount | None = None
    for item in events:
        result = apply(state, item, book)
        if isinstance(result, Rejected):
            return result
        state = result
    assert state is not None
    return state


def refused(result: OrgAccount | Rejected, reason: AccountRejection) -> bool:
    return isinstance(result, Rejected) and result.reason is reason


def org(
    plan: str = "usage_based", mode: str = "self_serve", seat: str = "enterprise", seats: int = 3
) -> list[Any]:
    """An org with `seats` seats of one type, held by its primary owner `boss`, a member
    `m` and an admin `a`."""
    return [
        event(
            "org.created",
            {
                "plan": plan,
                "billing_mode": mode,
                "term_start": "2026-01-01",
                "seats": {seat: seats},
            },
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


def test_seat_removals_wait_for_renewal_and_never_leave_members_without_a_seat() -> None:
    """R5 as amended: a removal is pending until the renewal, self-serve and
    sales-assisted alike; one that would leave fewer seats than the members holding
    them is refused (`seat_removal_refused`)."""
    remove_one = event("seats.removed", {"seat_type": "enterprise", "quantity": 1})
    for mode in ("self_serve", "sales_assisted"):
        # 3 seats, 3 members: nothing is free to remove.
        assert refused(fold(*org(mode=mode), remove_one), AccountRejection.SEAT_REMOVAL_REFUSED)
        pending = fold(*org(mode=mode, seats=5), remove_one, remove_one)
        assert isinstance(pending, OrgAccount)
        assert pending.seats == {SeatType.ENTERPRISE: 5}
        assert pending.pending_seat_removals == {SeatType.ENTERPRISE: 2}
        assert refused(apply(pending, remove_one), AccountRejection.SEAT_REMOVAL_REFUSED)
        # A member cannot take a seat that is going away at renewal.
        joiner = event(
            "member.added", {"user_id": "x", "role": "member", "seat_type": "enterprise"}
        )
        assert refused(apply(pending, joiner), AccountRejection.NO_SEAT_AVAILABLE)
        renewed = apply(pending, event("contract.renewed", {"term_start": "2027-01-01"}, None))
        assert isinstance(renewed, OrgAccount)
        assert renewed.seats == {SeatType.ENTERPRISE: 3} and renewed.pending_seat_removals == {}


def test_members_fit_the_purchased_seats_of_their_type() -> None:
    """An org holding one `chat` seat takes one chat member; a second chat member, or an
    enterprise member when it holds no enterprise seat, is refused (`no_seat_available`)
    — whoever adds them, the system included; buying a seat makes room. Changing a
    member's seat type is held to the same rule."""
    created = event(
        "org.created",
        {
            "plan": "usage_based",
            "billing_mode": "sales_assisted",
            "term_start": "2026-01-01",
            "seats": {"chat": 1},
        },
        actor=None,
    )

    def member(user: str, seat: str, kind: str = "member.added") -> Any:
        return event(kind, {"user_id": user, "role": "member", "seat_type": seat}, None)

    one = fold(created, member("c1", "chat"))
    assert isinstance(one, OrgAccount)
    assert refused(apply(one, member("c2", "chat")), AccountRejection.NO_SEAT_AVAILABLE)
    for user in ("e1", "e2", "e3", "e4", "e5"):
        assert refused(apply(one, member(user, "enterprise")), AccountRejection.NO_SEAT_AVAILABLE)
    assert refused(
        apply(one, member("c1", "enterprise", "member.updated")),
        AccountRejection.NO_SEAT_AVAILABLE,
    )
    more = fold(
        created,
        member("c1", "chat"),
        event("seats.added", {"seat_type": "enterprise", "quantity": 1}, None),
        member("e1", "enterprise"),
    )
    assert isinstance(more, OrgAccount) and more.members_holding(SeatType.ENTERPRISE) == 1
    # Moving c1 to enterprise needs a free enterprise seat; once one is bought it moves,
    # and its chat seat is free for someone else.
    moved = fold(
        created,
        member("c1", "chat"),
        event("seats.added", {"seat_type": "enterprise", "quantity": 1}, None),
        member("c1", "enterprise", "member.updated"),
        member("c2", "chat"),
    )
    assert isinstance(moved, OrgAccount)
    assert {u: m.seat for u, m in moved.members.items()} == {
        "c1": SeatType.ENTERPRISE,
        "c2": SeatType.CHAT,
    }


def test_membership_is_changed_by_owners_and_the_primary_owner_only_moves_by_transfer() -> None:
    """R14 applied to membership: a plain member may not add, remove or change members;
    nobody removes or demotes the primary owner — not an owner, not the system; an org
    has one primary owner; only the primary owner (or the system) transfers it, and the
    previous primary owner becomes an owner."""
    base = [
        *org(seats=6),
        event("member.added", {"user_id": "o", "role": "owner", "seat_type": "enterprise"}, None),
    ]
    plain = {"user_id": "m", "role": "member"}
    an_owner = {"user_id": "o", "role": "owner"}
    remove_boss = {"user_id": "boss", "role": "primary_owner", "seat_type": "enterprise"}
    add_x = {"user_id": "x", "role": "member", "seat_type": "enterprise"}
    for kind, data in (
        ("member.removed", remove_boss),
        ("member.added", add_x),
        ("member.removed", {"user_id": "a", "role": "admin", "seat_type": "enterprise"}),
        ("member.updated", {"user_id": "m", "role": "owner", "seat_type": "enterprise"}),
    ):
        assert refused(fold(*base, event(kind, data, plain)), AccountRejection.NOT_PERMITTED)
    for actor in (an_owner, OWNER, None):
        assert refused(
            fold(*base, event("member.removed", remove_boss, actor)),
            AccountRejection.PRIMARY_OWNER_PROTECTED,
        )
        demoted = {"user_id": "boss", "role": "owner", "seat_type": "enterprise"}
        assert refused(
            fold(*base, event("member.updated", demoted, actor)),
            AccountRejection.PRIMARY_OWNER_PROTECTED,
        )
    second = {"user_id": "x", "role": "primary_owner", "seat_type": "enterprise"}
    assert refused(
        fold(*base, event("member.added", second, None)), AccountRejection.PRIMARY_OWNER_PROTECTED
    )
    to_o = {"user_id": "o", "role": "primary_owner", "seat_type": "enterprise"}
    assert refused(
        fold(*base, event("member.updated", to_o, an_owner)),
        AccountRejection.PRIMARY_OWNER_PROTECTED,
    )
    for actor in (OWNER, None):
        moved = fold(*base, event("member.updated", to_o, actor))
        assert isinstance(moved, OrgAccount)
        assert moved.primary_owner == "o" and moved.members["boss"].role is Role.OWNER
    owners_may = fold(
        *base,
        event("member.added", add_x, an_owner),
        event("member.removed", {**add_x}, an_owner),
        event(
            "member.updated", {"user_id": "m", "role": "admin", "seat_type": "enterprise"}, an_owner
        ),
    )
    assert isinstance(owners_may, OrgAccount) and owners_may.members["m"].role is Role.ADMIN


def test_seats_that_cannot_be_priced_are_refused_not_raised() -> None:
    """`no_price_in_force`: the price book starts 2025-01-01. An org.created dated in 2024
    for a term starting then, or a seat added on a day a (later) price book does not
    cover, is refused with its reason — the fold never raises. An old contract created
    now joins in its current term, which is priced."""
    legacy = event(
        "org.created",
        {
            "plan": "usage_based",
            "billing_mode": "sales_assisted",
            "term_start": "2024-06-01",
            "seats": {"enterprise": 2},
        },
        None,
        at="2024-07-01T00:00:00Z",
    )
    outcome = apply_account_event(None, legacy, BOOK)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is AccountRejection.NO_PRICE_IN_FORCE and "2024-06-01" in outcome.detail
    today = event(
        "org.created",
        {
            "plan": "usage_based",
            "billing_mode": "sales_assisted",
            "term_start": "2024-06-01",
            "seats": {"enterprise": 2},
        },
        None,
    )
    joined = apply_account_event(None, today, BOOK)
    assert isinstance(joined, Applied) and joined.state.term_start == "2026-06-01"
    [annual] = joined.invoices
    assert annual.document_id == "org.seat_invoice.2026-06-01.001" and annual.total == "960.00"
    later_book = default_price_book_text().replace('"2025-01-01"', '"2027-01-01"')
    assert "2027-01-01" in later_book
    added = event("seats.added", {"seat_type": "enterprise", "quantity": 1}, None)
    assert refused(
        apply(joined.state, added, PriceBook.from_json(later_book)),
        AccountRejection.NO_PRICE_IN_FORCE,
    )


def test_renewals_are_due_on_every_anniversary_with_ids_from_their_term() -> None:
    """R3/R7: `renewals_due` gives one system renewal per anniversary reached, dated at
    its midnight, with the same id however often it is asked for."""
    state = fold(*org())
    assert isinstance(state, OrgAccount) and state.term_start == "2026-01-01"
    assert renewals_due(state, datetime(2026, 12, 31, tzinfo=UTC).date()) == []
    due = renewals_due(state, datetime(2028, 1, 1, tzinfo=UTC).date())
    assert [(r.event_id, r.data.term_start.isoformat(), r.actor) for r in due] == [
        ("renewal:2027-01-01", "2027-01-01", None),
        ("renewal:2028-01-01", "2028-01-01", None),
    ]
    assert due[0].occurred_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert due == renewals_due(state, datetime(2028, 1, 1, tzinfo=UTC).date())


def test_legacy_orgs_migrate_at_renewal_keeping_caps_credits_and_members() -> None:
    """R7: a seat-based org renews into usage-based, every member on an enterprise seat,
    roles, caps and purchases kept."""
    before = fold(
        *org(plan="seat_based", seat="premium"),
        event("credits.purchased", {"purchase_id": "p1", "amount": "20.00"}),
        event("spend_cap.set", {"user_id": "m", "limit": "3.00"}),
    )
    assert isinstance(before, OrgAccount)
    after = apply(before, event("contract.renewed", {"term_start": "2027-01-01"}, None))
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
    not_later = apply(after, event("contract.renewed", {"term_start": "2027-01-01"}, None))
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
        lambda kind, u, role, seat, a: event(
            kind, {"user_id": u, "role": role, "seat_type": seat}, a
        ),
        st.sampled_from(["member.added", "member.removed", "member.updated"]),
        st.sampled_from(["x", "y", "m", "boss", "ghost"]),
        st.sampled_from(["member", "owner", "primary_owner"]),
        st.sampled_from(["enterprise", "chat", "standard"]),
        st.sampled_from(ACTORS),
    ),
)


@settings(max_examples=200)
@given(st.sampled_from(["self_serve", "sales_assisted"]), st.lists(EVENTS, max_size=25))
def test_folding_never_raises_never_mutates_and_conserves_purchases(
    mode: str, events: list[Any]
) -> None:
    """Any sequence folds without raising; a refused event leaves the state untouched (the
    input object is not mutated either); purchases in the state equal the accepted ones;
    members never outnumber the seats kept of their type; there is one primary owner."""
    state = fold(*org(mode=mode, seats=4))
    assert isinstance(state, OrgAccount)
    accepted_purchases = 0
    for item in events:
        snapshot = copy.deepcopy(state)
        result = apply(state, item)
        assert state == snapshot  # the fold never mutates its input
        if isinstance(result, Rejected):
            continue
        if item.type == "credits.purchased":
            accepted_purchases += item.data.amount
        state = result
        for seat in SeatType:
            assert state.members_holding(seat) <= state.seats_kept(seat)
        assert [m.role for m in state.members.values()].count(Role.PRIMARY_OWNER) == 1
    assert sum(state.purchases.values()) == accepted_purchases
