"""The documents customers receive (SPEC §4 Documents): usage invoices, credit
statements and seat invoices. Money is a decimal string of cents ("12.34"); field order
is the SPEC's, so the same document always serialises to the same bytes."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

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


class DocumentOrigin(StrEnum):
    BATCH = "batch"  # `billing run`: monthly documents
    ACCOUNT_EVENT = "account_event"  # seat invoices, issued as their event is stored


class IssuedDocumentRecord(Contract):
    """A value on `billing.documents.v1`: an issued document and the part of the log it
    covers — per partition (list index) of usage.priced.v1 and account.events.v1, the
    offset below which the org's events were stored when it was issued. Late events are
    those of its month at or past these offsets (G5). The topic is the record of what was
    issued, so a ClickHouse rebuild restores the same documents (G3)."""

    document: Annotated[CreditStatement | Document, Field(union_mode="left_to_right")]
    origin: DocumentOrigin
    usage_watermarks: tuple[int, ...] = ()
    account_watermarks: tuple[int, ...] = ()
