"""An org's account as a pure fold over its account events (R1–R7, R11, R14).

`apply_account_event(state, event)` returns the next state, or an `AccountRejection`
saying why the event changes nothing. Deterministic and free of I/O: the account
processor folds live events with it, `metering rebuild` replays the log through it, and
the billing batch can reconstruct any org's history from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum

from schemas.account import (
    DEFAULT_NOTIFICATION_THRESHOLDS,
    SEAT_TYPES_BY_PLAN,
    AccountEvent,
    Actor,
    BillingMode,
    ContractRenewed,
    CreditsPurchased,
    MemberAdded,
    MemberRemoved,
    OrgCreated,
    Plan,
    PlanMigrationRequested,
    Role,
    SeatsAdded,
    SeatsRemoved,
    SeatType,
    SpendCapSet,
)
from schemas.money import MAX_TOTAL_NANO_USD, format_usd

MONEY_ROLES = frozenset({Role.PRIMARY_OWNER, Role.OWNER})


class AccountRejection(StrEnum):
    """Why an account event was refused (dead-lettered; the state is unchanged)."""

    UNKNOWN_ORG = "unknown_org"
    ORG_ALREADY_EXISTS = "org_already_exists"
    NOT_PERMITTED = "not_permitted"  # R14: only owners/primary owner spend or set caps
    UNKNOWN_MEMBER = "unknown_member"
    MEMBER_ALREADY_EXISTS = "member_already_exists"
    SEAT_TYPE_NOT_IN_PLAN = "seat_type_not_in_plan"
    SEAT_REMOVAL_REFUSED = "seat_removal_refused"  # R5: self-serve, mid-term
    NOT_SELF_SERVE = "not_self_serve"  # credits are for prepaid (self-serve) orgs
    DUPLICATE_PURCHASE = "duplicate_purchase"
    RENEWAL_NOT_LATER = "renewal_not_later"
    NOT_SEAT_BASED = "not_seat_based"
    BALANCE_LIMIT_EXCEEDED = "balance_limit_exceeded"  # credits ever bought > MAX_TOTAL_NANO_USD


@dataclass(frozen=True)
class Rejected:
    reason: AccountRejection
    detail: str


@dataclass(frozen=True)
class Member:
    seat: SeatType
    role: Role


@dataclass(frozen=True)
class OrgAccount:
    org_id: str
    plan: Plan
    billing_mode: BillingMode
    term_start: str  # ISO date of the current annual term
    extra_usage: bool
    thresholds: tuple[Decimal, ...] = DEFAULT_NOTIFICATION_THRESHOLDS
    seats: dict[SeatType, int] = field(default_factory=dict)
    # Sales-assisted removals wait for renewal (R5).
    pending_seat_removals: dict[SeatType, int] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    org_cap_nano_usd: int | None = None  # None: unlimited
    user_caps_nano_usd: dict[str, int] = field(default_factory=dict)  # absent: unlimited
    purchases: dict[str, int] = field(default_factory=dict)  # purchase_id → nano-USD


def _may_spend(state: OrgAccount, actor: Actor | None) -> Rejected | None:
    """R14. The actor's role is read from the org's own member list, not from what the
    event claims: a member who says they are an owner is still a member. A null actor is
    the system itself (sales operations, migrations) and may."""
    if actor is None:
        return None
    member = state.members.get(actor.user_id)
    if member is None or member.role not in MONEY_ROLES:
        role = member.role.value if member else "not a member"
        return Rejected(
            AccountRejection.NOT_PERMITTED,
            f"{actor.user_id} ({role}) may not do this; owners and the primary owner may",
        )
    return None


def _seat_fits(state: OrgAccount, seat: SeatType) -> Rejected | None:
    if seat not in SEAT_TYPES_BY_PLAN[state.plan]:
        return Rejected(
            AccountRejection.SEAT_TYPE_NOT_IN_PLAN,
            f"seat type {seat.value} is not part of plan {state.plan.value}",
        )
    return None


def migrate_to_usage_based(state: OrgAccount) -> OrgAccount:
    """R7: every member moves to an enterprise seat, the plan becomes usage-based, the
    billing mode stays; caps, credits and members are kept. Seat removals still waiting
    for the renewal (R5) carry over as enterprise seats, so an early migration does not
    make the next term bill seats the customer already gave up."""
    total_seats = sum(state.seats.values())
    pending = sum(state.pending_seat_removals.values())
    return replace(
        state,
        plan=Plan.USAGE_BASED,
        extra_usage=False,
        seats={SeatType.ENTERPRISE: total_seats} if total_seats else {},
        pending_seat_removals={SeatType.ENTERPRISE: pending} if pending else {},
        members={u: Member(SeatType.ENTERPRISE, m.role) for u, m in state.members.items()},
    )


def _created(event: OrgCreated) -> OrgAccount:
    data = event.data
    return OrgAccount(
        org_id=event.org_id,
        plan=data.plan,
        billing_mode=data.billing_mode,
        term_start=data.term_start.isoformat(),
        extra_usage=data.extra_usage,
        thresholds=tuple(sorted(data.notification_thresholds)),
        seats={seat: n for seat, n in data.seats.items() if n},
    )


def apply_account_event(state: OrgAccount | None, event: AccountEvent) -> OrgAccount | Rejected:
    """The next state of the org after `event`, or why the event is refused."""
    if isinstance(event, OrgCreated):
        if state is not None:
            return Rejected(AccountRejection.ORG_ALREADY_EXISTS, f"{event.org_id} exists")
        return _created(event)
    if state is None:
        return Rejected(AccountRejection.UNKNOWN_ORG, f"no org.created for {event.org_id}")
    return _apply_to_existing(state, event)


def _add_member(state: OrgAccount, event: MemberAdded) -> OrgAccount | Rejected:
    data = event.data
    if data.user_id in state.members:
        return Rejected(AccountRejection.MEMBER_ALREADY_EXISTS, f"{data.user_id} is a member")
    return _seat_fits(state, data.seat_type) or replace(
        state, members={**state.members, data.user_id: Member(data.seat_type, data.role)}
    )


def _remove_member(state: OrgAccount, event: MemberRemoved) -> OrgAccount | Rejected:
    user = event.data.user_id
    if user not in state.members:
        return Rejected(AccountRejection.UNKNOWN_MEMBER, f"{user} is not a member")
    return replace(
        state,
        members={u: m for u, m in state.members.items() if u != user},
        user_caps_nano_usd={u: c for u, c in state.user_caps_nano_usd.items() if u != user},
    )


def _add_seats(state: OrgAccount, event: SeatsAdded) -> OrgAccount | Rejected:
    data = event.data
    refused = _may_spend(state, event.actor) or _seat_fits(state, data.seat_type)
    if refused:
        return refused
    seats = {**state.seats, data.seat_type: state.seats.get(data.seat_type, 0) + data.quantity}
    return replace(state, seats=seats)


def _migrate_on_request(state: OrgAccount, event: PlanMigrationRequested) -> OrgAccount | Rejected:
    if state.plan is not Plan.SEAT_BASED:
        return Rejected(AccountRejection.NOT_SEAT_BASED, "the org is already usage-based")
    return _may_spend(state, event.actor) or migrate_to_usage_based(state)


def _apply_to_existing(  # noqa: PLR0911 - one return per event type reads best
    state: OrgAccount, event: AccountEvent
) -> OrgAccount | Rejected:
    match event:
        case MemberAdded():
            return _add_member(state, event)
        case MemberRemoved():
            return _remove_member(state, event)
        case SeatsAdded():
            return _add_seats(state, event)
        case SeatsRemoved():
            return _remove_seats(state, event)
        case CreditsPurchased():
            return _purchase(state, event)
        case SpendCapSet():
            return _set_cap(state, event)
        case ContractRenewed():
            return _renew(state, event)
        case PlanMigrationRequested():
            return _migrate_on_request(state, event)
    raise AssertionError(f"unhandled account event {type(event).__name__}")  # pragma: no cover


def _remove_seats(state: OrgAccount, event: SeatsRemoved) -> OrgAccount | Rejected:
    data = event.data
    refused = _may_spend(state, event.actor) or _seat_fits(state, data.seat_type)
    if refused:
        return refused
    if state.billing_mode is BillingMode.SELF_SERVE:
        return Rejected(
            AccountRejection.SEAT_REMOVAL_REFUSED,
            "self-serve orgs cannot remove seats during the term (seats are billed annually)",
        )
    held = state.seats.get(data.seat_type, 0) - state.pending_seat_removals.get(data.seat_type, 0)
    if data.quantity > held:
        return Rejected(
            AccountRejection.SEAT_REMOVAL_REFUSED,
            f"removing {data.quantity} {data.seat_type.value} seats, only {held} held",
        )
    pending = dict(state.pending_seat_removals)
    pending[data.seat_type] = pending.get(data.seat_type, 0) + data.quantity
    return replace(state, pending_seat_removals=pending)


def _purchase(state: OrgAccount, event: CreditsPurchased) -> OrgAccount | Rejected:
    refused = _may_spend(state, event.actor)
    if refused:
        return refused
    if state.billing_mode is not BillingMode.SELF_SERVE:
        return Rejected(
            AccountRejection.NOT_SELF_SERVE, "sales-assisted orgs are billed in arrears"
        )
    if event.data.purchase_id in state.purchases:
        return Rejected(
            AccountRejection.DUPLICATE_PURCHASE,
            f"purchase {event.data.purchase_id} was already credited",
        )
    # Bounded so the balance can never leave 64 bits (docs/decisions.md › Money bounds).
    bought = sum(state.purchases.values())
    if bought + event.data.amount > MAX_TOTAL_NANO_USD:
        return Rejected(
            AccountRejection.BALANCE_LIMIT_EXCEEDED,
            f"credits bought would exceed {format_usd(MAX_TOTAL_NANO_USD)} USD "
            f"({format_usd(bought)} bought so far)",
        )
    return replace(state, purchases={**state.purchases, event.data.purchase_id: event.data.amount})


def _set_cap(state: OrgAccount, event: SpendCapSet) -> OrgAccount | Rejected:
    refused = _may_spend(state, event.actor)
    if refused:
        return refused
    user, limit = event.data.user_id, event.data.limit
    if user is None:
        return replace(state, org_cap_nano_usd=limit)
    if user not in state.members:
        return Rejected(AccountRejection.UNKNOWN_MEMBER, f"{user} is not a member")
    caps = {u: c for u, c in state.user_caps_nano_usd.items() if u != user}
    if limit is not None:
        caps[user] = limit
    return replace(state, user_caps_nano_usd=caps)


def _renew(state: OrgAccount, event: ContractRenewed) -> OrgAccount | Rejected:
    new_start = event.data.term_start.isoformat()
    if new_start <= state.term_start:
        return Rejected(
            AccountRejection.RENEWAL_NOT_LATER,
            f"renewal term {new_start} does not start after the current {state.term_start}",
        )
    seats = {
        seat: n - state.pending_seat_removals.get(seat, 0)
        for seat, n in state.seats.items()
        if n - state.pending_seat_removals.get(seat, 0) > 0
    }
    renewed = replace(state, term_start=new_start, seats=seats, pending_seat_removals={})
    # R7: legacy orgs migrate at renewal, whatever seats they hold.
    return migrate_to_usage_based(renewed) if is_legacy(renewed) else renewed


def is_legacy(state: OrgAccount) -> bool:
    """Seat-based, or holding any seat type other than `enterprise` (R2, R7)."""
    seat_types = set(state.seats) | {m.seat for m in state.members.values()}
    return state.plan is Plan.SEAT_BASED or bool(seat_types - {SeatType.ENTERPRISE})
