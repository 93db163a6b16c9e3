"""An issued document as a ClickHouse row and as a Kafka record. The JSON body is
rendered once, here, and every file is written from it: the same document is always the
same bytes (SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing.rounding import parse_cents
from metering.enforcement.records import OutputMessage
from schemas.documents import CreditStatement, Document, DocumentOrigin, IssuedDocumentRecord

DOCUMENT_COLUMNS = (
    "document_id",
    "org_id",
    "kind",
    "period_start",
    "period_end",
    "issued_at",
    "total_cents",
    "body",
    "origin",
    "usage_watermarks",
    "account_watermarks",
)


def document_body(document: Document) -> str:
    """The file's bytes: SPEC field order, two-space indent, a final newline."""
    return document.model_dump_json(indent=2) + "\n"


def parse_body(body: str) -> Document:
    if '"opening_balance"' in body:
        return CreditStatement.model_validate_json(body)
    return Document.model_validate_json(body)


@dataclass(frozen=True)
class IssuedDocument:
    document: Document
    origin: DocumentOrigin
    usage_watermarks: tuple[int, ...] = ()
    account_watermarks: tuple[int, ...] = ()

    @property
    def document_id(self) -> str:
        return self.document.document_id

    def row(self) -> tuple[Any, ...]:
        doc = self.document
        return (
            doc.document_id,
            doc.org_id,
            doc.kind.value,
            doc.period_start,
            doc.period_end,
            doc.issued_at,
            parse_cents(doc.total),
            document_body(doc),
            self.origin.value,
            list(self.usage_watermarks),
            list(self.account_watermarks),
        )

    def record(self) -> str:
        """Its value on `billing.documents.v1`."""
        return IssuedDocumentRecord(
            document=self.document,
            origin=self.origin,
            usage_watermarks=self.usage_watermarks,
            account_watermarks=self.account_watermarks,
        ).model_dump_json()

    def message(self, topic: str) -> OutputMessage:
        return OutputMessage(topic, self.document.org_id, self.record().encode())

    @classmethod
    def from_record(cls, value: bytes) -> IssuedDocument:
        """Raises pydantic.ValidationError for anything we did not write."""
        record = IssuedDocumentRecord.model_validate_json(value)
        return cls(
            record.document,
            record.origin,
            tuple(record.usage_watermarks),
            tuple(record.account_watermarks),
        )
