"""The month-end batch (`billing run`): issues each org's documents of a month from
ClickHouse, records them (Kafka first, then ClickHouse) and writes the files.

Which events a document covers is decided by the log, not by the clock: the batch first
waits until the ClickHouse sink has stored everything on its inputs, then reads the
sink's committed offsets (the watermarks) and bills, per org, the events stored below
them. Events of an issued month that are stored later are late: they go on the org's
next usage document as adjustment lines (G5), never into the issued one.

Idempotent and crash-safe: a document is published to `billing.documents.v1` before it
is stored, the next run waits for the sink to store whatever a killed run published,
and ids are deterministic, so a re-run issues nothing twice and rewrites the same files.
An org's months are issued in order, from the first it has not had documents for.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from billing.documents import LateUsage, UsageTotal, midnight, month_period
from billing.monthly import MonthInputs, closing_cents, month_documents
from billing.pricing import PriceBook
from metering import faults
from metering.clickhouse.store import Store
from metering.documents.files import write_document_files
from metering.documents.history import USAGE_KINDS, OrgHistory, billed_usage, load_histories
from metering.documents.records import IssuedDocument, parse_body
from metering.documents.store import (
    StoredDocument,
    issued_documents,
    store_new_documents,
    stored_ids,
)
from metering.documents.watermarks import Watermarks, wait_until_stored
from metering.enforcement.publisher import Publisher
from metering.metrics import (
    BILLING_DOCUMENTS_ISSUED,
    BILLING_LAST_SUCCESS,
    BILLING_RUN_SECONDS,
    BILLING_RUNS,
)
from metering.settings import Settings
from schemas.documents import Document, DocumentKind, DocumentOrigin


class MonthNotClosed(ValueError):
    """Final documents are only issued for months that have ended (R19: preview the
    open month instead)."""


@dataclass
class _Previous:
    """An org's latest usage document before the month being issued."""

    usage_watermarks: tuple[int, ...] | None = None
    account_watermarks: tuple[int, ...] | None = None
    closing_cents: int = 0


@dataclass
class BatchReport:
    month: str
    orgs: int = 0
    issued: Counter[str] = field(default_factory=Counter)
    documents: list[StoredDocument] = field(default_factory=list)  # the month's, all orgs
    files: list[Path] = field(default_factory=list)


def next_month(month: str) -> str:
    return month_period(month)[1].strftime("%Y-%m")


def months_between(first: str, last: str) -> list[str]:
    months, month = [], first
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


class BillingBatch:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], datetime],
        book: PriceBook | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._book = book or settings.load_price_book()

    # -- issuing -------------------------------------------------------------------------

    def run(
        self,
        month: str,
        out: Path | None = None,
        *,
        org_id: str | None = None,
        on_org: Callable[[int, int], None] | None = None,
        watermarks: Watermarks | None = None,
    ) -> BatchReport:
        """Issue `month`'s documents (and any earlier month an org has none for yet),
        then write the month's files to `out`. `on_org(done, total)` reports progress."""
        _, end = month_period(month)
        if self._clock().astimezone(UTC).date() < end:
            raise MonthNotClosed(
                f"{month} has not ended yet; its documents are issued from {end} on "
                "(`billing preview` shows the month to date)"
            )
        started = time.perf_counter()
        try:
            report = self._run(month, out, org_id=org_id, on_org=on_org, watermarks=watermarks)
        except Exception:
            BILLING_RUNS.labels("failure").inc()
            BILLING_RUN_SECONDS.labels("failure").observe(time.perf_counter() - started)
            raise
        BILLING_RUNS.labels("success").inc()
        BILLING_RUN_SECONDS.labels("success").observe(time.perf_counter() - started)
        for kind, count in report.issued.items():
            BILLING_DOCUMENTS_ISSUED.labels(kind).inc(count)
        BILLING_LAST_SUCCESS.set_to_current_time()
        return report

    def _run(
        self,
        month: str,
        out: Path | None,
        *,
        org_id: str | None,
        on_org: Callable[[int, int], None] | None,
        watermarks: Watermarks | None,
    ) -> BatchReport:
        marks = watermarks or wait_until_stored(self._settings)
        orgs = [org_id] if org_id else None
        histories = {
            org: history
            for org, history in load_histories(self._store, orgs).items()
            if history.first_month <= month
        }
        previous, pending = self._plan(histories, month, orgs)
        report = BatchReport(month, orgs=len(histories))
        done = 0
        for billed_month in sorted(pending):
            due = sorted(pending[billed_month])
            usage = billed_usage(self._store, billed_month, due, marks.usage)
            issued: list[IssuedDocument] = []
            for org in due:
                documents = self._month_documents(
                    histories[org], billed_month, usage.get(org, ([], [])), previous[org], marks
                )
                issued += [
                    IssuedDocument(d, DocumentOrigin.BATCH, marks.usage, marks.account)
                    for d in documents
                ]
                previous[org] = _after(documents[0], marks)
                if billed_month == month and on_org:
                    done += 1
                    on_org(done, len(histories))
            report.issued.update(self._issue(issued))
        if on_org:
            on_org(len(histories), len(histories))
        report.documents = self.month_documents_stored(month, orgs)
        if out is not None:
            report.files = write_document_files(report.documents, out)
        return report

    def _plan(
        self, histories: dict[str, OrgHistory], month: str, orgs: list[str] | None
    ) -> tuple[dict[str, _Previous], dict[str, set[str]]]:
        """Per org its latest usage document, and per month the orgs still due one."""
        stored = issued_documents(self._store, orgs)
        issued_months: dict[str, set[str]] = defaultdict(set)
        previous = {org: _Previous() for org in histories}
        for document in stored:  # ordered by period
            if document.kind in USAGE_KINDS and document.org_id in previous:
                issued_months[document.org_id].add(document.period_start.strftime("%Y-%m"))
                previous[document.org_id] = _after(parse_body(document.body), None, document)
        pending: dict[str, set[str]] = defaultdict(set)
        for org, history in histories.items():
            for due in months_between(history.first_month, month):
                if due not in issued_months[org]:
                    pending[due].add(org)
        # `previous` must be the document before the first month due: the loop above
        # took the latest one, which is right because months are issued in order.
        return previous, pending

    def _month_documents(
        self,
        history: OrgHistory,
        month: str,
        usage: tuple[list[UsageTotal], list[LateUsage]],
        previous: _Previous,
        marks: Watermarks,
    ) -> list[Document]:
        start, _ = month_period(month)
        inputs = MonthInputs(
            org_id=history.org_id,
            month=month,
            billing_mode=history.billing_mode,
            usage=usage[0],
            late_usage=usage[1],
            purchases=history.purchases(month, marks.account, previous.account_watermarks),
            opening_cents=previous.closing_cents,
            legacy_seats=history.legacy_seats_at(midnight(start), marks.account),
        )
        return month_documents(inputs, self._book)

    def _issue(self, documents: list[IssuedDocument]) -> Counter[str]:
        """Publish, then store, what is not issued yet."""
        stored = stored_ids(self._store, (d.document_id for d in documents))
        fresh = [d for d in documents if d.document_id not in stored]
        if fresh:
            publisher = Publisher(self._settings.kafka_bootstrap)
            publisher.publish_blocking([d.message(self._settings.topics.documents) for d in fresh])
            faults.reached(faults.Point.DOCUMENTS_PUBLISHED)  # published, not stored: crash tests
            store_new_documents(self._store, fresh)
        return Counter(d.document.kind.value for d in fresh)

    # -- reading -------------------------------------------------------------------------

    def month_documents_stored(
        self, month: str, org_ids: Sequence[str] | None = None
    ) -> list[StoredDocument]:
        """The documents of `month`: its monthly documents, and the seat invoices issued
        during it."""
        start, end = month_period(month)
        return [
            d
            for d in issued_documents(self._store, org_ids)
            if (d.origin == DocumentOrigin.BATCH.value and d.period_start == start)
            or (
                d.origin == DocumentOrigin.ACCOUNT_EVENT.value
                and midnight(start) <= d.issued_at.astimezone(UTC) < midnight(end)
            )
        ]

    # -- the open month (R19) -------------------------------------------------------------

    def preview(self, org_id: str, marks: Watermarks) -> list[Document]:
        """The month-to-date draft of the org's documents: nothing is issued or stored."""
        month = self._clock().astimezone(UTC).strftime("%Y-%m")
        history = load_histories(self._store, [org_id]).get(org_id)
        if history is None:
            return []
        previous = _Previous()
        for document in issued_documents(self._store, [org_id]):
            if document.kind in USAGE_KINDS and document.period_start < month_period(month)[0]:
                previous = _after(parse_body(document.body), None, document)
        usage = billed_usage(self._store, month, [org_id], marks.usage).get(org_id, ([], []))
        return self._month_documents(history, month, usage, previous, marks)


def _after(
    document: Document, marks: Watermarks | None, stored: StoredDocument | None = None
) -> _Previous:
    """What the next month needs from this usage document."""
    usage = marks.usage if marks else stored.usage_watermarks if stored else ()
    account = marks.account if marks else stored.account_watermarks if stored else ()
    closing = closing_cents(document) if document.kind is DocumentKind.CREDIT_STATEMENT else 0
    return _Previous(usage, account, closing)
