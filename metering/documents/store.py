"""The `documents` table: what has been issued. A document_id is written once: every
writer (the batch, the sink replaying `billing.documents.v1`, the sink issuing seat
invoices) asks which ids are stored and inserts only the others, so an issued document
never changes and never appears twice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from metering.clickhouse.store import Store
from metering.documents.records import DOCUMENT_COLUMNS, IssuedDocument


def stored_ids(store: Store, ids: Iterable[str]) -> set[str]:
    sql = f"SELECT document_id FROM {store.table('documents')} WHERE document_id IN %(ids)s"
    return {row[0] for row in store.rows_in(sql, "ids", ids)}


def store_new_documents(store: Store, documents: Sequence[IssuedDocument]) -> int:
    """Insert the documents not stored yet (the first of repeated ids wins). Returns how
    many were inserted."""
    stored = stored_ids(store, (d.document_id for d in documents))
    fresh: list[IssuedDocument] = []
    for document in documents:
        if document.document_id not in stored:
            stored.add(document.document_id)
            fresh.append(document)
    store.insert("documents", [d.row() for d in fresh], DOCUMENT_COLUMNS)
    return len(fresh)


@dataclass(frozen=True)
class StoredDocument:
    document_id: str
    org_id: str
    kind: str
    period_start: date
    issued_at: datetime
    body: str
    origin: str
    total_cents: int
    usage_watermarks: tuple[int, ...]
    account_watermarks: tuple[int, ...]


# The columns of a StoredDocument, in its field order (one row per document id).
_STORED = (
    "SELECT document_id, any(org_id), any(kind), any(period_start), any(issued_at), "
    "any(body), any(origin), any(usage_watermarks), any(account_watermarks), "
    "any(total_cents) FROM {table} {where} GROUP BY document_id"
)


def _stored(r: Sequence[Any]) -> StoredDocument:
    return StoredDocument(
        document_id=r[0],
        org_id=r[1],
        kind=r[2],
        period_start=r[3],
        issued_at=r[4],
        body=r[5],
        origin=r[6],
        usage_watermarks=tuple(r[7]),
        account_watermarks=tuple(r[8]),
        total_cents=int(r[9]),
    )


def issued_documents(store: Store, org_ids: Sequence[str] | None = None) -> list[StoredDocument]:
    """Every issued document (of these orgs), ordered by org, period and id."""
    order = " ORDER BY any(org_id), any(period_start), document_id"
    if org_ids is None:
        rows = store.rows(_STORED.format(table=store.table("documents"), where="") + order)
    else:  # batches of sorted orgs, so the concatenation keeps the org order
        where = "WHERE org_id IN %(orgs)s"
        sql = _STORED.format(table=store.table("documents"), where=where) + order
        rows = store.rows_in(sql, "orgs", org_ids)
    return [_stored(r) for r in rows]


@dataclass(frozen=True)
class DocumentSummary:
    """An issued document as a list shows it (the body is not read)."""

    document_id: str
    kind: str
    period_start: date
    issued_at: datetime
    total_cents: int


def org_documents(store: Store, org_id: str) -> list[DocumentSummary]:
    """The org's issued documents, newest period first (then by id)."""
    sql = (
        "SELECT document_id, any(kind), any(period_start) AS period, any(issued_at), "
        f"any(total_cents) FROM {store.table('documents')} WHERE org_id = %(org)s "
        "GROUP BY document_id ORDER BY period DESC, document_id"
    )
    return [
        DocumentSummary(
            document_id=r[0],
            kind=r[1],
            period_start=r[2],
            # in UTC, whether the client returns it naive (embedded chDB) or aware
            issued_at=r[3] if r[3].tzinfo else r[3].replace(tzinfo=UTC),
            total_cents=int(r[4]),
        )
        for r in store.rows(sql, {"org": org_id})
    ]


def org_document(store: Store, org_id: str, document_id: str) -> StoredDocument | None:
    """One issued document of this org; None when the id is unknown or another org's."""
    where = "WHERE org_id = %(org)s AND document_id = %(id)s"
    sql = _STORED.format(table=store.table("documents"), where=where)
    found = store.rows(sql, {"org": org_id, "id": document_id})
    return _stored(found[0]) if found else None
