"""The documents of one org's month (R6, R11, R12, G5), from what the batch read for it:
the month's usage per member × model, late usage and purchases of earlier months, the
previous statement's closing balance and the legacy seats held when the month began.

Pure: the batch decides which events belong to this document (on time: of this month
and stored when it was issued; late: of an earlier month and stored after that month's
document) and hands the sums in; this module only assembles and rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from billing.documents import (
    LateUsage,
    Purchase,
    SeatFee,
    UsageTotal,
    credit_statement,
    month_period,
    monthly_seat_invoice,
    usage_invoice,
)
from billing.pricing import PriceBook
from billing.rounding import parse_cents
from schemas.account import BillingMode, SeatType
from schemas.documents import CreditStatement, Document


@dataclass(frozen=True)
class MonthInputs:
    org_id: str
    month: str  # YYYY-MM
    billing_mode: BillingMode
    usage: Sequence[UsageTotal] = ()
    late_usage: Sequence[LateUsage] = ()
    purchases: Sequence[Purchase] = ()  # self-serve: this month's and late ones
    opening_cents: int = 0  # self-serve: the previous statement's closing balance
    # Legacy seat-based plans: the seats held when the month began (R6); empty otherwise.
    legacy_seats: Mapping[SeatType, int] = field(default_factory=dict)


def month_documents(inputs: MonthInputs, book: PriceBook) -> list[Document]:
    """The usage document of the month — a usage invoice (sales-assisted, R12) or a
    credit statement (self-serve, R11) — and, for a legacy seat-based plan, its monthly
    seat invoice (R6). Usage lines carry billed amounts: on seat-based seats only the
    part beyond the allowance."""
    documents: list[Document] = [usage_document(inputs)]
    start, _ = month_period(inputs.month)
    fees = seat_fees(book, inputs.legacy_seats, start)
    if fees:
        documents.append(monthly_seat_invoice(inputs.org_id, inputs.month, fees))
    return documents


def usage_document(inputs: MonthInputs) -> Document:
    if inputs.billing_mode is BillingMode.SELF_SERVE:
        statement, _ = credit_statement(
            inputs.org_id,
            inputs.month,
            opening_cents=inputs.opening_cents,
            purchases=inputs.purchases,
            usage=inputs.usage,
            late=inputs.late_usage,
        )
        return statement
    return usage_invoice(inputs.org_id, inputs.month, list(inputs.usage), list(inputs.late_usage))


def seat_fees(book: PriceBook, seats: Mapping[SeatType, int], on: date) -> list[SeatFee]:
    return [
        SeatFee(seat.value, n, book.seat_price(seat, on).monthly_fee)
        for seat, n in sorted(seats.items())
        if n > 0
    ]


def closing_cents(document: Document) -> int:
    """A statement's closing balance in cents (the next statement opens with it)."""
    assert isinstance(document, CreditStatement)
    return parse_cents(document.closing_balance)
