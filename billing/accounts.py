"""An org's account as a pure fold over its account events (R1–R7, R11, R14).

`apply_account_event(state, event, book)` returns the next state with the seat invoices
the event issues (`Applied`), or a `Rejected` saying why the event changes nothing.
Deterministic and free of I/O: the account processor folds live events with it,
`metering rebuild` replays the log through it, the ClickHouse ledger and the billing
batch reconstruct any org's history with it, and the API checks a change with it before
appending it. No event can make it raise: whatever the rules or the price book cannot
accept is a `Rejected` with its reason.

Rules beyond the single event (docs/decisions.md › Contracts and seats):
- members fit the seats: the members holding a seat type never outnumber the seats of
  that type the org keeps (held minus removals pending for the renewal);
- membership is managed by owners and the primary owner (or the system: a null actor);
  an org has at most one primary owner, who is never removed or demoted except by a
  transfer (`member.updated` making another member primary owner);
- a term lasts a year and renews by itself on its anniversary (`renewals_due` gives the
  system's `contract.renewed` events); seat removals take effect then, for self-serve and
  sales-assisted orgs alike; legacy orgs migrate then (R7).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time

from billing.account_state import (
    MONEY_ROLES,
    AccountRejection,
    Applied,
    Member,
    OrgAccount,
    Rejected,
    WebhookEndpoint,
)
from billing.pricing import PriceBook
from billing.proration import anniversaries_until, term_containing, term_end
from billing.seat_invoices import invoice_seats
from schemas.account import (
    SEAT_TYPES_BY_PLAN,
    AccountEvent,
    Actor,
    BillingMode,
    ContractRenewed,
    ContractRenewedData,
    CreditsPurchased,
    MemberAdded,
    MemberRemoved,
    MemberUpdated,
    NotificationEndpointRemoved,
    NotificationEndpointSet,
    NotificationRoutingSet,
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

__all__ = [
    "MONEY_ROLES",
    "AccountRejection",
    "Applied",
    "Member",
    "OrgAccount",
    "Rejected",
    "WebhookEndpoint",
    "apply_account_event",
    "is_legacy",
    "migrate_to_usage_based",
    "next_state",
    "renewal_date",
    "renewals_due",
]


def apply_account_event(
    state: OrgAccount | None, event: AccountEvent, book: PriceBook
) -> Applied | Rejected:
    """The org after `event` and the seat invoices it issues, or why it is refused."""
    outcome = next_state(state, event)
    if isinstance(outcome, Rejected):
        return outcome
    try:
        return invoice_seats(state, event, outcome, book)
    except LookupError as exc:  # the price book has no version in force that day
        return Rejected(AccountRejection.NO_PRICE_IN_FORCE, str(exc))


def next_state(state: OrgAccount | None, event: AccountEvent) -> OrgAccount | Rejected:
    """The rules alone: the org after `event`, without its invoices (they need prices)."""
    if isinstance(event, OrgCreated):
        if state is not None:
            return Rejected(AccountRejection.ORG_ALREADY_EXISTS, f"{event.org_id} exists")
        return _created(event)
    if state is None:
        return Rejected(AccountRejection.UNKNOWN_ORG, f"no org.created for {event.org_id}")
    return _apply_to_existing(state, event)


def _apply_to_existing(  # noqa: PLR0911 - one return per event type reads best
    state: OrgAccount, event: AccountEvent
) -> OrgAccount | Rejected:
    match event:
        case MemberAdded():
            return _add_member(state, event)
        case MemberRemoved():
            return _remove_member(state, event)
        case MemberUpdated():
            return _update_member(state, event)
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
        case NotificationEndpointSet() | NotificationEndpointRemoved() | NotificationRoutingSet():
            return _configure_notifications(state, event)
    raise AssertionError(f"unhandled account event {type(event).__name__}")  # pragma: no cover


# -- who may ----------------------------------------------------------------------------


def _authorized(state: OrgAccount, actor: Actor | None) -> Rejected | None:
    """R14, for money and for membership. The actor's role is read from the org's own
    member list, not from what the event claims: a member who says they are an owner is
    still a member. A null actor is the system itself (sales operations, SCIM,
    migrations) and may."""
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


def _seat_available(state: OrgAccount, seat: SeatType) -> Rejected | None:
    """One more member on `seat` must still fit the seats the org keeps."""
    taken, kept = state.members_holding(seat), state.seats_kept(seat)
    if taken + 1 > kept:
        pending = state.pending_seat_removals.get(seat, 0)
        why = f" ({pending} pending removal at renewal)" if pending else ""
        return Rejected(
            AccountRejection.NO_SEAT_AVAILABLE,
            f"all {kept} {seat.value} seats are taken{why}; add seats first",
        )
    return None


# -- members ----------------------------------------------------------------------------


def _add_member(state: OrgAccount, event: MemberAdded) -> OrgAccount | Rejected:
    data = event.data
    refused = _authorized(state, event.actor)
    if refused:
        return refused
    if data.user_id in state.members:
        return Rejected(AccountRejection.MEMBER_ALREADY_EXISTS, f"{data.user_id} is a member")
    if data.role is Role.PRIMARY_OWNER and state.primary_owner is not None:
        return Rejected(
            AccountRejection.PRIMARY_OWNER_PROTECTED,
            f"{state.primary_owner} is the primary owner; transfer it with member.updated",
        )
    refused = _seat_fits(state, data.seat_type) or _seat_available(state, data.seat_type)
    if refused:
        return refused
    member = Member(data.seat_type, data.role, data.email)
    return replace(state, members={**state.members, data.user_id: member})


def _remove_member(state: OrgAccount, event: MemberRemoved) -> OrgAccount | Rejected:
    user = event.data.user_id
    refused = _authorized(state, event.actor)
    if refused:
        return refused
    if user not in state.members:
        return Rejected(AccountRejection.UNKNOWN_MEMBER, f"{user} is not a member")
    if user == state.primary_owner:
        return Rejected(
            AccountRejection.PRIMARY_OWNER_PROTECTED,
            f"{user} is the primary owner; transfer the primary ownership first",
        )
    return replace(
        state,
        members={u: m for u, m in state.members.items() if u != user},
        user_caps_nano_usd={u: c for u, c in state.user_caps_nano_usd.items() if u != user},
    )


def _update_member(state: OrgAccount, event: MemberUpdated) -> OrgAccount | Rejected:
    data, actor = event.data, event.actor
    refused = _authorized(state, actor)
    if refused:
        return refused
    current = state.members.get(data.user_id)
    if current is None:
        return Rejected(AccountRejection.UNKNOWN_MEMBER, f"{data.user_id} is not a member")
    primary = state.primary_owner
    members = dict(state.members)
    if data.role is not current.role:
        if current.role is Role.PRIMARY_OWNER:
            return Rejected(
                AccountRejection.PRIMARY_OWNER_PROTECTED,
                f"{data.user_id} is the primary owner; make another member primary owner "
                "to transfer it",
            )
        if data.role is Role.PRIMARY_OWNER and primary is not None:
            if actor is not None and actor.user_id != primary:
                return Rejected(
                    AccountRejection.PRIMARY_OWNER_PROTECTED,
                    f"only the primary owner ({primary}) may transfer the primary ownership",
                )
            members[primary] = replace(members[primary], role=Role.OWNER)  # the transfer
    if data.seat_type is not current.seat:
        refused = _seat_fits(state, data.seat_type) or _seat_available(state, data.seat_type)
        if refused:
            return refused
    # An absent email keeps the member's address; a given one replaces it.
    email = data.email if data.email is not None else current.email
    members[data.user_id] = Member(data.seat_type, data.role, email)
    return replace(state, members=members)


# -- seats ------------------------------------------------------------------------------


def _add_seats(state: OrgAccount, event: SeatsAdded) -> OrgAccount | Rejected:
    data = event.data
    refused = _authorized(state, event.actor) or _seat_fits(state, data.seat_type)
    if refused:
        return refused
    seats = {**state.seats, data.seat_type: state.seats.get(data.seat_type, 0) + data.quantity}
    return replace(state, seats=seats)


def _remove_seats(state: OrgAccount, event: SeatsRemoved) -> OrgAccount | Rejected:
    """R5: seats are paid for the whole term, so a removal takes effect at the renewal
    (no refund), for self-serve and sales-assisted orgs alike; until then it is pending.
    Refused when it would leave fewer seats than the members holding that type."""
    data = event.data
    refused = _authorized(state, event.actor) or _seat_fits(state, data.seat_type)
    if refused:
        return refused
    kept, taken = state.seats_kept(data.seat_type), state.members_holding(data.seat_type)
    if data.quantity > kept - taken:
        return Rejected(
            AccountRejection.SEAT_REMOVAL_REFUSED,
            f"removing {data.quantity} {data.seat_type.value} seats: {kept} kept after "
            f"pending removals, {taken} held by members, so at most {max(kept - taken, 0)} "
            "can be removed",
        )
    pending = dict(state.pending_seat_removals)
    pending[data.seat_type] = pending.get(data.seat_type, 0) + data.quantity
    return replace(state, pending_seat_removals=pending)


# -- money ------------------------------------------------------------------------------


def _purchase(state: OrgAccount, event: CreditsPurchased) -> OrgAccount | Rejected:
    refused = _authorized(state, event.actor)
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
    refused = _authorized(state, event.actor)
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


# -- notification delivery ------------------------------------------------------------


def _configure_notifications(
    state: OrgAccount,
    event: NotificationEndpointSet | NotificationEndpointRemoved | NotificationRoutingSet,
) -> OrgAccount | Rejected:
    """Owners (R14) say where notifications go; the notifier reads it from the state."""
    refused = _authorized(state, event.actor)
    if refused:
        return refused
    if isinstance(event, NotificationEndpointSet):
        old, new_id = state.webhook, event.data.secret_id
        if old is None:
            endpoint = WebhookEndpoint(event.data.url, new_id)
        elif old.secret_id == new_id:  # the URL changed, the secret did not
            endpoint = replace(old, url=event.data.url)
        else:  # a rotation: the previous secret keeps signing for a while
            endpoint = WebhookEndpoint(
                event.data.url, new_id, old.secret_id, event.occurred_at.isoformat()
            )
        return replace(state, webhook=endpoint)
    if isinstance(event, NotificationEndpointRemoved):
        return replace(state, webhook=None)
    return replace(
        state,
        webhook_kinds=tuple(sorted(set(event.data.webhook))),
        email_kinds=tuple(sorted(set(event.data.email))),
    )


# -- the contract -----------------------------------------------------------------------


def _created(event: OrgCreated) -> OrgAccount:
    """A contract that began more than a year before the org was created here joins in
    the term that holds the creation: the terms before it were not billed by us."""
    data = event.data
    return OrgAccount(
        org_id=event.org_id,
        plan=data.plan,
        billing_mode=data.billing_mode,
        term_start=term_containing(data.term_start, event.occurred_at.date()).isoformat(),
        extra_usage=data.extra_usage,
        thresholds=tuple(sorted(data.notification_thresholds)),
        seats={seat: n for seat, n in data.seats.items() if n},
    )


def _renew(state: OrgAccount, event: ContractRenewed) -> OrgAccount | Rejected:
    new_start = event.data.term_start.isoformat()
    if new_start <= state.term_start:
        return Rejected(
            AccountRejection.RENEWAL_NOT_LATER,
            f"renewal term {new_start} does not start after the current {state.term_start}",
        )
    seats = {seat: state.seats_kept(seat) for seat in state.seats if state.seats_kept(seat) > 0}
    renewed = replace(state, term_start=new_start, seats=seats, pending_seat_removals={})
    # R7: legacy orgs migrate at renewal, whatever seats they hold.
    return migrate_to_usage_based(renewed) if is_legacy(renewed) else renewed


def _migrate_on_request(state: OrgAccount, event: PlanMigrationRequested) -> OrgAccount | Rejected:
    if state.plan is not Plan.SEAT_BASED:
        return Rejected(AccountRejection.NOT_SEAT_BASED, "the org is already usage-based")
    return _authorized(state, event.actor) or migrate_to_usage_based(state)


def migrate_to_usage_based(state: OrgAccount) -> OrgAccount:
    """R7: every member moves to an enterprise seat, the plan becomes usage-based, the
    billing mode stays; caps, credits and members are kept. Seat removals still waiting
    for the renewal (R5) carry over as enterprise seats, so an early migration does not
    make the next term bill seats the customer already gave up. Members fit the seats
    before, so they fit the pooled enterprise seats after."""
    total_seats = sum(state.seats.values())
    pending = sum(state.pending_seat_removals.values())
    return replace(
        state,
        plan=Plan.USAGE_BASED,
        extra_usage=False,
        seats={SeatType.ENTERPRISE: total_seats} if total_seats else {},
        pending_seat_removals={SeatType.ENTERPRISE: pending} if pending else {},
        members={u: replace(m, seat=SeatType.ENTERPRISE) for u, m in state.members.items()},
    )


def is_legacy(state: OrgAccount) -> bool:
    """Seat-based, or holding any seat type other than `enterprise` (R2, R7)."""
    seat_types = set(state.seats) | {m.seat for m in state.members.values()}
    return state.plan is Plan.SEAT_BASED or bool(seat_types - {SeatType.ENTERPRISE})


def renewals_due(state: OrgAccount, today: date) -> list[ContractRenewed]:
    """The renewals the org's contract is due by `today`: one `contract.renewed` of the
    system (null actor) per anniversary that has come, dated at its midnight, with an id
    derived from its term — whoever appends it, and however often, it is one event."""
    return [
        ContractRenewed(
            event_id=f"renewal:{start.isoformat()}",
            type="contract.renewed",
            org_id=state.org_id,
            occurred_at=datetime.combine(start, time(), tzinfo=UTC),
            actor=None,
            data=ContractRenewedData(term_start=start),
        )
        for start in anniversaries_until(date.fromisoformat(state.term_start), today)
    ]


def renewal_date(state: OrgAccount) -> date:
    """When the current term ends and the next one begins."""
    return term_end(date.fromisoformat(state.term_start))
