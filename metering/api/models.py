"""Request and response bodies of the HTTP API (OpenAPI is generated from these)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.account import SeatType
from schemas.common import Contract, Id
from schemas.money import PositiveStrictNanoUsd, StrictNanoUsd


class CreditPurchase(Contract):
    purchase_id: Id = Field(description="the payment's id: buying twice with one id credits once")
    amount: PositiveStrictNanoUsd = Field(description='USD as a decimal string, e.g. "100.00"')


class CapChange(Contract):
    limit: StrictNanoUsd | None = Field(
        description="USD as a decimal string, or null for unlimited (R16); required"
    )


class SeatChange(Contract):
    seat_type: SeatType
    quantity: int = Field(ge=1, le=100_000, strict=True)


class Authorization(Contract):
    allowed: bool
    reason: (
        Literal[
            "credits_exhausted",
            "org_cap_reached",
            "user_cap_reached",
            "surface_not_in_seat",
            "seat_allowance_exhausted",
            "unknown_member",
        ]
        | None
    )


class Appended(Contract):
    """The account event the request became, durable on `account.events.v1`; the change
    takes effect as soon as the worker applies it (within the enforcement latency)."""

    event_id: str
    type: str
    status: Literal["accepted"] = "accepted"


class MemberRow(Contract):
    user_id: str
    role: str | None = Field(description="null: spent this month but is not a member")
    seat_type: str | None
    spend: str = Field(description="billed month-to-date spend, USD (exact, ≤ 9 decimals)")
    cap: str | None = Field(description="USD; null: unlimited")
    effective_limit: str | None = Field(description="lower of the member's and the org's cap")
    status: Literal["active", "blocked"] | None = Field(description="now; null for a closed month")
    reason: str | None
    allowance_used: str | None = Field(
        default=None,
        description="seat-based plans: the part of the seat's monthly allowance used, USD; "
        "null on other plans and for non-members",
    )
    allowance: str | None = Field(
        default=None, description="seat-based plans: the seat's monthly allowance, USD"
    )


class UsageResponse(Contract):
    org_id: str
    month: str
    plan: str
    billing_mode: str
    spend: str = Field(description="billed month-to-date spend, USD (exact, ≤ 9 decimals)")
    cap: str | None
    status: Literal["active", "cap_reached"]
    credit_balance: str | None = Field(
        description="USD, exact; self-serve only; may be negative (R11)"
    )
    members: list[MemberRow]


class SeatHolding(Contract):
    seat_type: str
    purchased: int = Field(description="seats paid for in the current term")
    in_use: int = Field(description="members holding this seat type")
    pending_removal: int = Field(description="removed from the next term on (R5)")
    at_renewal: int = Field(description="seats the next term starts with, before migration")


class OrgContract(Contract):
    """The org's plan, term and seats (Organization settings › Organization)."""

    org_id: str
    plan: str
    billing_mode: str
    term_start: str
    renews_on: str = Field(description="the next term starts (and is invoiced) on this day")
    seats: list[SeatHolding]
    migrates_at_renewal: bool = Field(
        description="a legacy plan or seat type: at the renewal every member moves to an "
        "enterprise seat and the plan becomes usage_based (R7)"
    )


class Problem(Contract):
    detail: str | dict[str, str]


class FieldError(BaseModel):
    """One of FastAPI's request-validation errors (it may add fields, e.g. `input`)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class Invalid(Contract):
    """422: the fields FastAPI refused, one item each; or, when the account event the
    request would become is invalid, one sentence."""

    detail: list[FieldError] | str
