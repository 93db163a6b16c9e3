"""The account ledger's fold: decides, for each account event the sink stores, whether it
was accepted or rejected — the same outcome the account processor reached, because both
fold the same per-org ordered log (one org = one partition) with the same pure rules
(`billing.accounts`), the same `now` (the record's broker append time) and the same
first-occurrence-wins rule for a repeated event_id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from billing.accounts import OrgAccount, Rejected, apply_account_event
from billing.pricing import PriceBook
from billing.seat_invoices import SeatInvoicer
from metering.clickhouse.rows import account_row, event_from_row
from metering.enforcement.records import SourceRecord
from schemas.account import ACCOUNT_EVENT_ADAPTER, AccountEvent
from schemas.documents import Document
from schemas.validation import InvalidEvent, parse_account_event

# Columns `restore` needs, in the order it reads them.
RESTORE_COLUMNS = "event_id, org_id, type, occurred_at, actor_user_id, actor_role, data, status"


class LedgerFold:
    """Also issues the seat invoices accepted events create (R4: immediately), numbered
    by the fold's own history so a replay numbers them the same."""

    def __init__(self, book: PriceBook) -> None:
        self._book = book
        self._states: dict[str, OrgAccount] = {}
        self._seen: dict[str, set[str]] = {}  # org → event ids stored
        self._invoicer = SeatInvoicer(book)
        self.seat_invoices: list[Document] = []  # issued since the caller last took them

    def restore(self, stored: Iterable[tuple[Any, ...]]) -> None:
        """Rebuild from stored rows (RESTORE_COLUMNS), in source order."""
        self._states.clear()
        self._seen.clear()
        self._invoicer = SeatInvoicer(self._book)
        for *columns, status in stored:
            event_id, org_id = columns[0], columns[1]
            self._seen.setdefault(org_id, set()).add(event_id)
            if status != "accepted":
                continue
            event = ACCOUNT_EVENT_ADAPTER.validate_python(event_from_row(columns))
            outcome = apply_account_event(self._states.get(org_id), event)
            if isinstance(outcome, Rejected):  # stored as accepted: the history is corrupt
                raise RuntimeError(f"stored accepted event {event_id} is refused on replay")
            # Numbers only: these invoices were stored with their events.
            self._invoicer.on_accepted(self._states.get(org_id), event, outcome)
            self._states[org_id] = outcome

    def is_stored(self, org_id: str, event_id: str) -> bool:
        return event_id in self._seen.get(org_id, ())

    def apply(self, record: SourceRecord) -> tuple[Any, ...] | None:
        """The row for this record, or None when it has no place in the ledger: not a
        valid account event (the account processor dead-letters it) or an event_id
        already stored (a duplicate, or a conflict the processor dead-letters)."""
        try:
            if record.value is None:
                return None
            event: AccountEvent = parse_account_event(record.value, now=record.received_at)
        except InvalidEvent:
            return None
        if self.is_stored(event.org_id, event.event_id):
            return None
        self._seen.setdefault(event.org_id, set()).add(event.event_id)
        outcome = apply_account_event(self._states.get(event.org_id), event)
        if isinstance(outcome, Rejected):
            return account_row(
                event,
                after=self._states.get(event.org_id),
                rejection=outcome.reason.value,
                source=record,
            )
        self.seat_invoices += self._invoicer.on_accepted(
            self._states.get(event.org_id), event, outcome
        )
        self._states[event.org_id] = outcome
        return account_row(event, after=outcome, rejection=None, source=record)

    def take_seat_invoices(self) -> list[Document]:
        taken, self.seat_invoices = self.seat_invoices, []
        return taken

    def state(self, org_id: str) -> OrgAccount | None:
        return self._states.get(org_id)
