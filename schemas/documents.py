"""The documents customers receive (SPEC §4 Documents): usage invoices, credit
statements and seat invoices. Money is a decimal string of cents ("12.34"); field order
is the SPEC's, so the same document always serialises to the same bytes."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from schemas.common import Contract, UtcDatetime


class DocumentKind(StrEnum):
    USAGE_INVOICE = "usage_invoice"
    CREDIT_STATEMENT = "credit_statement"
    SEAT_INVOICE = "seat_invoice"


class DocumentLine(Contract):
    description: str
    user_id: str | None
    model: str | None
    quantity: str  # tokens, seats or months, as a decimal string
    amount: str  # USD, rounded to cents half-up (SPEC §2)


class Document(Contract):
    document_id: str
    org_id: str
    kind: DocumentKind
    period_start: date
    period_end: date
    currency: Literal["USD"] = "USD"
    lines: list[DocumentLine]
    total: str  # the sum of the rounded lines
    issued_at: UtcDatetime


class CreditStatement(Document):
    """A self-serve month (R11): closing = opening + purchases − usage, on paper; the next
    month opens with this closing balance."""

    opening_balance: str
    purchases: str
    usage: str
    closing_balance: str
