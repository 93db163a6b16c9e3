"""Document assembly (pure, no I/O): from an org's usage aggregates and account history
for a period, the documents of SPEC §4 with SPEC §2 rounding — each line rounded to
cents half-up, every total the sum of its rounded lines.

Ids are deterministic: `<org>.<kind>.<period>.<sequence>`; `issued_at` is the end of
the period for monthly documents and the event's time for seat invoices, never the wall
clock, so the same inputs always give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from billing.proration import MONTHS_PER_TERM, remaining_months, rest_of_month, term_end
from billing.rounding import format_cents, to_cents
from schemas.documents import CreditStatement, Document, DocumentKind, DocumentLine


@dataclass(frozen=True, order=True)
class UsageTotal:
    """One member × model's usage in a month (from the ClickHouse rollups)."""

    user_id: str
    model: str
    tokens: int
    amount_nano_usd: int  # billed (R6: only extra usage on seat-based seats)


@dataclass(frozen=True, order=True)
class LateUsage:
    """Usage of an earlier month whose document was already issued (G5): billed as an
    adjustment on this period's document, never by changing the issued one."""

    month: str  # YYYY-MM of its occurred_at
    user_id: str
    model: str
    tokens: int
    amount_nano_usd: int


@dataclass(frozen=True)
class Purchase:
    purchase_id: str
    occurred_at: datetime
    amount_nano_usd: int
    # Bought in an earlier month but received after that month's statement (G5).
    late: bool = False


def month_period(month: str) -> tuple[date, date]:
    start = date.fromisoformat(f"{month}-01")
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, end


def document_id(org_id: str, kind: DocumentKind, period: str, sequence: int = 1) -> str:
    return f"{org_id}.{kind.value}.{period}.{sequence:03d}"


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _line(
    description: str,
    amount: int | Fraction,
    quantity: str,
    user_id: str | None = None,
    model: str | None = None,
) -> tuple[DocumentLine, int]:
    cents = to_cents(amount)
    line = DocumentLine(
        description=description,
        user_id=user_id,
        model=model,
        quantity=quantity,
        amount=format_cents(cents),
    )
    return line, cents


def _usage_lines(
    usage: Sequence[UsageTotal], late: Sequence[LateUsage]
) -> tuple[list[DocumentLine], int]:
    lines, total = [], 0
    for item in sorted(usage):
        line, cents = _line(
            f"{item.model} usage", item.amount_nano_usd, str(item.tokens), item.user_id, item.model
        )
        lines.append(line)
        total += cents
    for adjustment in sorted(late):
        line, cents = _line(
            f"Adjustment: {adjustment.model} usage in {adjustment.month}, received after "
            "that month's document was issued",
            adjustment.amount_nano_usd,
            str(adjustment.tokens),
            adjustment.user_id,
            adjustment.model,
        )
        lines.append(line)
        total += cents
    return lines, total


def usage_invoice(
    org_id: str,
    month: str,
    usage: list[UsageTotal],
    late: list[LateUsage] = (),  # type: ignore[assignment]
) -> Document:
    """R12: a sales-assisted org's month in arrears, one line per member × model (on a
    seat-based plan: the extra usage, R6), plus adjustment lines for late usage."""
    start, end = month_period(month)
    lines, total = _usage_lines(usage, late)
    return Document(
        document_id=document_id(org_id, DocumentKind.USAGE_INVOICE, month),
        org_id=org_id,
        kind=DocumentKind.USAGE_INVOICE,
        period_start=start,
        period_end=end,
        lines=lines,
        total=format_cents(total),
        issued_at=midnight(end),
    )


def credit_statement(
    org_id: str,
    month: str,
    *,
    opening_cents: int,
    purchases: Sequence[Purchase],
    usage: Sequence[UsageTotal],
    late: Sequence[LateUsage] = (),
) -> tuple[CreditStatement, int]:
    """R11: a self-serve month. Returns the statement and its closing balance in cents,
    which opens the next month's statement. The closing balance may be negative."""
    start, end = month_period(month)
    lines: list[DocumentLine] = []
    bought = 0
    for purchase in sorted(purchases, key=lambda p: (p.occurred_at, p.purchase_id)):
        description = f"Credit purchase {purchase.purchase_id}"
        if purchase.late:
            description += (
                f" of {purchase.occurred_at.astimezone(UTC).date().isoformat()}, received "
                "after that month's statement was issued"
            )
        line, cents = _line(description, purchase.amount_nano_usd, "1")
        lines.append(line)
        bought += cents
    usage_lines, used = _usage_lines(usage, late)
    lines += usage_lines
    closing = opening_cents + bought - used
    statement = CreditStatement(
        document_id=document_id(org_id, DocumentKind.CREDIT_STATEMENT, month),
        org_id=org_id,
        kind=DocumentKind.CREDIT_STATEMENT,
        period_start=start,
        period_end=end,
        lines=lines,
        total=format_cents(bought - used),
        issued_at=midnight(end),
        opening_balance=format_cents(opening_cents),
        purchases=format_cents(bought),
        usage=format_cents(used),
        closing_balance=format_cents(closing),
    )
    return statement, closing


@dataclass(frozen=True, order=True)
class SeatFee:
    seat_type: str
    quantity: int
    monthly_fee_nano_usd: int


def _seat_document(
    org_id: str,
    *,
    period: str,
    sequence: int,
    start: date,
    end: date,
    issued_at: datetime,
    lines_and_cents: list[tuple[DocumentLine, int]],
) -> Document:
    return Document(
        document_id=document_id(org_id, DocumentKind.SEAT_INVOICE, period, sequence),
        org_id=org_id,
        kind=DocumentKind.SEAT_INVOICE,
        period_start=start,
        period_end=end,
        lines=[line for line, _ in lines_and_cents],
        total=format_cents(sum(cents for _, cents in lines_and_cents)),
        issued_at=issued_at,
    )


def annual_seat_invoice(
    org_id: str,
    term_start: date,
    seats: list[SeatFee],
    *,
    issued_at: datetime | None = None,
    sequence: int = 1,
) -> Document:
    """R3: at term start (or renewal), seats × monthly price × 12. Issued when the event
    that starts the term is processed (by default: at the term's start)."""
    lines = [
        _line(
            f"{fee.seat_type} seats, {fee.quantity} × 12 months",
            fee.quantity * fee.monthly_fee_nano_usd * MONTHS_PER_TERM,
            str(fee.quantity),
        )
        for fee in sorted(seats)
    ]
    return _seat_document(
        org_id,
        period=term_start.isoformat(),
        sequence=sequence,
        start=term_start,
        end=term_end(term_start),
        issued_at=issued_at or midnight(term_start),
        lines_and_cents=lines,
    )


def added_seat_invoice(
    org_id: str,
    *,
    term_start: date,
    added_at: datetime,
    fees: list[SeatFee],
    sequence: int,
    why: str = "added",
) -> Document:
    """R4: seats added mid-term, invoiced at once for the rest of the term (an early
    migration, R7, invoices its enterprise seats the same way)."""
    added_on = max(added_at.astimezone(UTC).date(), term_start)
    months = remaining_months(term_start, added_on)
    lines = [
        _line(
            f"{fee.quantity} {fee.seat_type} seats {why} {added_on.isoformat()}, "
            f"{_months(months)} months remaining",
            fee.quantity * fee.monthly_fee_nano_usd * months,
            str(fee.quantity),
        )
        for fee in sorted(fees)
    ]
    return _seat_document(
        org_id,
        period=term_start.isoformat(),
        sequence=sequence,
        start=added_on,
        end=term_end(term_start),
        issued_at=added_at,
        lines_and_cents=lines,
    )


def rest_of_month_seat_invoice(
    org_id: str, *, added_at: datetime, fees: list[SeatFee], sequence: int
) -> Document:
    """R6 with R4's rule: legacy seats are billed by the month, so seats that arrive
    mid-month are invoiced at once for the rest of that month (days left, counting the
    day, over the days in the month); the next months come with the monthly invoice."""
    added_on = added_at.astimezone(UTC).date()
    share = rest_of_month(added_on)
    start, end = month_period(added_on.strftime("%Y-%m"))
    lines = [
        _line(
            f"{fee.quantity} {fee.seat_type} seats from {added_on.isoformat()}, "
            f"{_months(share)} of a month",
            fee.quantity * fee.monthly_fee_nano_usd * share,
            str(fee.quantity),
        )
        for fee in sorted(fees)
    ]
    return _seat_document(
        org_id,
        period=start.strftime("%Y-%m"),
        sequence=sequence,
        start=added_on,
        end=end,
        issued_at=added_at,
        lines_and_cents=lines,
    )


def _months(months: Fraction) -> str:
    exact = Decimal(months.numerator) / Decimal(months.denominator)
    return str(exact.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def monthly_seat_invoice(org_id: str, month: str, seats: list[SeatFee]) -> Document:
    """R6: a legacy seat-based plan's fixed monthly fee for the seats it holds when the
    month starts (allowance included). Issued with the month's other documents, in
    arrears; always sequence 001 of its month (mid-month additions follow it)."""
    start, end = month_period(month)
    lines = [
        _line(
            f"{fee.seat_type} seats, {fee.quantity} × monthly fee",
            fee.quantity * fee.monthly_fee_nano_usd,
            str(fee.quantity),
        )
        for fee in sorted(seats)
    ]
    return _seat_document(
        org_id,
        period=month,
        sequence=1,
        start=start,
        end=end,
        issued_at=midnight(end),
        lines_and_cents=lines,
    )
