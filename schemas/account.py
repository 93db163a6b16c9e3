"""Account events: everything that changes an org's plan, members, seats, caps or credits.

One envelope (`event_id`, `type`, `org_id`, `occurred_at`, `actor`, `data`) with a `data`
model per `type` (SPEC §4). The schema checks what can be judged from one event alone;
whether a change is allowed *now* (a self-serve seat removal mid-term, a cap set by a
member) depends on the org's state and is judged by the account processor.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    EmailStr,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from schemas.common import BoundedDate, Contract, Id, UtcDatetime
from schemas.money import NanoUsd, PositiveNanoUsd
from schemas.outputs import NotificationKind


class Plan(StrEnum):
    USAGE_BASED = "usage_based"
    SEAT_BASED = "seat_based"  # legacy (R6)


class BillingMode(StrEnum):
    SELF_SERVE = "self_serve"
    SALES_ASSISTED = "sales_assisted"


class Role(StrEnum):
    PRIMARY_OWNER = "primary_owner"
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class SeatType(StrEnum):
    ENTERPRISE = "enterprise"
    CHAT = "chat"  # legacy usage-based
    CHAT_CLAUDE_CODE = "chat_claude_code"  # legacy usage-based
    STANDARD = "standard"  # legacy seat-based
    PREMIUM = "premium"  # legacy seat-based


SEAT_TYPES_BY_PLAN: dict[Plan, frozenset[SeatType]] = {
    Plan.USAGE_BASED: frozenset({SeatType.ENTERPRISE, SeatType.CHAT, SeatType.CHAT_CLAUDE_CODE}),
    Plan.SEAT_BASED: frozenset({SeatType.STANDARD, SeatType.PREMIUM}),
}

MAX_SEATS = 1_000_000

SeatQuantity = Annotated[int, Field(strict=True, ge=1, le=MAX_SEATS)]
Threshold = Annotated[Decimal, Field(gt=0, le=1, decimal_places=4)]
DEFAULT_NOTIFICATION_THRESHOLDS = (Decimal("0.5"), Decimal("0.8"), Decimal("1"))


class Actor(Contract):
    user_id: Id
    role: Role


class OrgCreatedData(Contract):
    plan: Plan
    billing_mode: BillingMode
    # The contract's start; an org created later than a year after it joins in the term
    # that holds its creation (billing.accounts: earlier terms were billed elsewhere).
    term_start: BoundedDate
    seats: dict[SeatType, Annotated[int, Field(strict=True, ge=0, le=MAX_SEATS)]]
    extra_usage: bool = False
    notification_thresholds: Annotated[
        tuple[Threshold, ...], Field(min_length=1, max_length=10)
    ] = DEFAULT_NOTIFICATION_THRESHOLDS

    @model_validator(mode="after")
    def _seats_fit_plan(self) -> OrgCreatedData:
        allowed = SEAT_TYPES_BY_PLAN[self.plan]
        wrong = sorted(seat for seat in self.seats if seat not in allowed)
        if wrong:
            raise ValueError(f"seat types {wrong} do not belong to plan {self.plan.value}")
        if self.extra_usage and self.plan is not Plan.SEAT_BASED:
            raise ValueError("extra_usage only applies to seat_based plans")
        if len(set(self.notification_thresholds)) != len(self.notification_thresholds):
            raise ValueError("notification_thresholds must not repeat")
        return self


class MemberData(Contract):
    """`member.added` / `member.removed`: the member as added (or as the caller last knew
    them, for a removal); `member.updated`: the member's new role and seat type."""

    user_id: Id
    role: Role
    seat_type: SeatType


class MemberDetails(MemberData):
    """`member.added` and `member.updated` may carry the member's email address, where
    their own notifications and, for owners, the org's go (optional; on `member.updated`
    an absent or null `email` keeps the address the member has)."""

    # Left out of the canonical form when absent, so the fingerprint (G1) of every
    # member event sent before this field existed stays what it was.
    email: EmailStr | None = Field(default=None, exclude_if=lambda value: value is None)


def _webhook_url(url: str) -> str:
    """An absolute http(s) URL with a host, no credentials and no fragment. Whether the
    host may be reached (SSRF) is the API's and the notifier's check, not the schema's:
    it depends on DNS and on the deployment."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials")
    if parts.fragment:
        raise ValueError("must not carry a fragment")
    return url


WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2048, pattern=r"^[\x21-\x7e]+$"),
    AfterValidator(_webhook_url),
]


class NotificationEndpointData(Contract):
    """`notification_endpoint.set`: where the org's webhooks go. `secret_id` is not the
    signing secret: the secret is derived from it with a key the log never holds
    (docs/decisions.md › Notification delivery), so the log can be read, replicated and
    kept forever without giving anyone the means to forge a webhook."""

    url: WebhookUrl
    secret_id: Id


class NotificationRoutingData(Contract):
    """`notification_routing.set`: which notification kinds go to the webhook and which
    to email (default: every kind to both)."""

    webhook: Annotated[tuple[NotificationKind, ...], Field(max_length=10)]
    email: Annotated[tuple[NotificationKind, ...], Field(max_length=10)]


class SeatsData(Contract):
    seat_type: SeatType
    quantity: SeatQuantity


class CreditsPurchasedData(Contract):
    purchase_id: Id  # the payment's id: buying twice with one purchase_id credits once
    amount: PositiveNanoUsd


class SpendCapSetData(Contract):
    user_id: Id | None  # None: the org-wide cap (R14)
    limit: NanoUsd | None  # None: unlimited (R16); required so "unlimited" is never implied


class ContractRenewedData(Contract):
    term_start: BoundedDate


class NoData(Contract):
    pass


class _Envelope(Contract):
    event_id: Id
    org_id: Id
    occurred_at: UtcDatetime
    actor: Actor | None  # None: the system itself (e.g. a sales-side contract change)


class OrgCreated(_Envelope):
    type: Literal["org.created"]
    data: OrgCreatedData


class MemberAdded(_Envelope):
    type: Literal["member.added"]
    data: MemberDetails


class MemberRemoved(_Envelope):
    type: Literal["member.removed"]
    data: MemberData


class MemberUpdated(_Envelope):
    """A member's new role and/or seat type. Making someone `primary_owner` transfers
    the primary ownership: the previous primary owner becomes an `owner`."""

    type: Literal["member.updated"]
    data: MemberDetails


class SeatsAdded(_Envelope):
    type: Literal["seats.added"]
    data: SeatsData


class SeatsRemoved(_Envelope):
    type: Literal["seats.removed"]
    data: SeatsData


class CreditsPurchased(_Envelope):
    type: Literal["credits.purchased"]
    data: CreditsPurchasedData


class SpendCapSet(_Envelope):
    type: Literal["spend_cap.set"]
    data: SpendCapSetData


class ContractRenewed(_Envelope):
    type: Literal["contract.renewed"]
    data: ContractRenewedData


class PlanMigrationRequested(_Envelope):
    type: Literal["plan.migration_requested"]
    data: NoData = NoData()


class NotificationEndpointSet(_Envelope):
    """Registers (or replaces) the org's webhook endpoint; a new `secret_id` rotates the
    signing secret."""

    type: Literal["notification_endpoint.set"]
    data: NotificationEndpointData


class NotificationEndpointRemoved(_Envelope):
    type: Literal["notification_endpoint.removed"]
    data: NoData = NoData()


class NotificationRoutingSet(_Envelope):
    type: Literal["notification_routing.set"]
    data: NotificationRoutingData


AccountEvent = Annotated[
    OrgCreated
    | MemberAdded
    | MemberRemoved
    | MemberUpdated
    | SeatsAdded
    | SeatsRemoved
    | CreditsPurchased
    | SpendCapSet
    | ContractRenewed
    | PlanMigrationRequested
    | NotificationEndpointSet
    | NotificationEndpointRemoved
    | NotificationRoutingSet,
    Field(discriminator="type"),
]

ACCOUNT_EVENT_ADAPTER: TypeAdapter[AccountEvent] = TypeAdapter(AccountEvent)
ACCOUNT_EVENT_MODELS: tuple[type[_Envelope], ...] = get_args(get_args(AccountEvent)[0])
ACCOUNT_EVENT_TYPES: tuple[str, ...] = tuple(
    get_args(model.model_fields["type"].annotation)[0] for model in ACCOUNT_EVENT_MODELS
)


class AccountOutcome(Contract):
    """`account.outcomes.v1`: what the account processor decided for the first occurrence
    of an account event's `event_id` — accepted, or rejected with the reason code — and
    the org's plan and billing mode after it (before it, when rejected; none before the
    org exists). The ClickHouse ledger (`account_events`) stores these as they are, so
    it can never disagree with the enforcement state. A replay after a crash publishes
    the same record again, byte for byte; duplicates and `event_id` conflicts have none
    (the first occurrence decided), nor has input that is not an account event (it is
    dead-lettered).
    """

    event: AccountEvent
    status: Literal["accepted", "rejected"]
    reason: str  # a reason code (docs/contract.md › Reason codes), "" when accepted
    plan: Plan | None
    billing_mode: BillingMode | None
    received_at: UtcDatetime  # the event's append time on account.events.v1
    source_partition: int
    source_offset: int
