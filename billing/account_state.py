"""An org's account as the fold keeps it: plan, term, seats, members, caps, purchases —
and the bookkeeping of the seat invoices issued so far, so the next invoice's number and
the seats a term still owes follow from the state alone (a replay issues the same ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from schemas.account import DEFAULT_NOTIFICATION_THRESHOLDS, BillingMode, Plan, Role, SeatType
from schemas.documents import Document
from schemas.outputs import NotificationKind

ALL_KINDS: tuple[NotificationKind, ...] = tuple(NotificationKind)

MONEY_ROLES = frozenset({Role.PRIMARY_OWNER, Role.OWNER})


class AccountRejection(StrEnum):
    """Why an account event was refused (dead-lettered; the state is unchanged)."""

    UNKNOWN_ORG = "unknown_org"
    ORG_ALREADY_EXISTS = "org_already_exists"
    NOT_PERMITTED = "not_permitted"  # R14: only owners/primary owner spend, set caps, manage
    UNKNOWN_MEMBER = "unknown_member"
    MEMBER_ALREADY_EXISTS = "member_already_exists"
    SEAT_TYPE_NOT_IN_PLAN = "seat_type_not_in_plan"
    NO_SEAT_AVAILABLE = "no_seat_available"  # every purchased seat of the type is taken
    PRIMARY_OWNER_PROTECTED = "primary_owner_protected"  # one primary owner; moved by transfer
    SEAT_REMOVAL_REFUSED = "seat_removal_refused"  # R5: more than is free to remove
    NOT_SELF_SERVE = "not_self_serve"  # credits are for prepaid (self-serve) orgs
    DUPLICATE_PURCHASE = "duplicate_purchase"
    RENEWAL_NOT_LATER = "renewal_not_later"
    NOT_SEAT_BASED = "not_seat_based"
    NO_PRICE_IN_FORCE = "no_price_in_force"  # the price book has no seat price for the day
    BALANCE_LIMIT_EXCEEDED = "balance_limit_exceeded"  # credits ever bought > MAX_TOTAL_NANO_USD


@dataclass(frozen=True)
class Rejected:
    reason: AccountRejection
    detail: str


@dataclass(frozen=True)
class Member:
    seat: SeatType
    role: Role
    email: str | None = None  # where their notifications go (owners: the org's too)


@dataclass(frozen=True)
class WebhookEndpoint:
    """The org's webhook: its URL and the id its signing secret is derived from (the
    secret itself is never in the log or the state: `metering.notify.secrets`)."""

    url: str
    secret_id: str
    # After a rotation the previous secret still signs for a while (both signatures are
    # sent), so a receiver that has not switched yet does not refuse the webhooks.
    previous_secret_id: str | None = None
    rotated_at: str | None = None  # ISO timestamp of the rotation (the event's)


@dataclass(frozen=True)
class OrgAccount:
    org_id: str
    plan: Plan
    billing_mode: BillingMode
    term_start: str  # ISO date of the current annual term
    extra_usage: bool
    thresholds: tuple[Decimal, ...] = DEFAULT_NOTIFICATION_THRESHOLDS
    seats: dict[SeatType, int] = field(default_factory=dict)
    # Removals wait for the renewal (R5: no mid-term change, no refund).
    pending_seat_removals: dict[SeatType, int] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    org_cap_nano_usd: int | None = None  # None: unlimited
    user_caps_nano_usd: dict[str, int] = field(default_factory=dict)  # absent: unlimited
    purchases: dict[str, int] = field(default_factory=dict)  # purchase_id → nano-USD
    # Seat-invoice bookkeeping (billing.seat_invoices): the last sequence number issued per
    # period (a term's start date, or a month for legacy seats), and per term (start
    # date) the seats already invoiced for it, by type — each seat is paid once per term.
    seat_invoice_sequences: dict[str, int] = field(default_factory=dict)
    seats_invoiced: dict[str, dict[SeatType, int]] = field(default_factory=dict)
    # Notification delivery (metering notifier): the webhook, and which kinds go where.
    webhook: WebhookEndpoint | None = None
    webhook_kinds: tuple[NotificationKind, ...] = ALL_KINDS
    email_kinds: tuple[NotificationKind, ...] = ALL_KINDS

    def members_holding(self, seat: SeatType) -> int:
        return sum(1 for member in self.members.values() if member.seat is seat)

    def seats_kept(self, seat: SeatType) -> int:
        """Seats of `seat` the org keeps into the next term: held minus pending removals."""
        return self.seats.get(seat, 0) - self.pending_seat_removals.get(seat, 0)

    @property
    def primary_owner(self) -> str | None:
        return next(
            (user for user, m in self.members.items() if m.role is Role.PRIMARY_OWNER), None
        )


@dataclass(frozen=True)
class Applied:
    """An accepted event: the org's next state and the seat invoices the event issues."""

    state: OrgAccount
    invoices: tuple[Document, ...] = ()
