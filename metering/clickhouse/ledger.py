"""The account ledger's fold: decides, for each account event the sink stores, whether it
was accepted or rejected — the same outcome the account processor reached, because both
fold the same per-org ordered log (one org = one partition) with the same pure rules
(`billing.accounts`, with the same price book), the same `now` (the record's broker
append time) and the same first-occurrence-wins rule for a repeated event_id. The seat
invoices an accepted event issues are the processor's to publish; the sink stores them
from `billing.documents.v1`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from billing.accounts import OrgAccount, Rejected, apply_account_event, next_state
from billing.pricing import PriceBook
from metering.clickhouse.rows import account_row, event_from_row
from metering.enforcement.records import SourceRecord
from schemas.account import ACCOUNT_EVENT_ADAPTER, AccountEvent
from schemas.validation import InvalidEvent, parse_account_event

log = logging.getLogger("metering.sink")

# Columns `restore` needs, in the order it reads them.
RESTORE_COLUMNS = "event_id, org_id, type, occurred_at, actor_user_id, actor_role, data, status"


class LedgerFold:
    def __init__(self, book: PriceBook) -> None:
        self._book = book
        self._states: dict[str, OrgAccount] = {}
        self._seen: dict[str, set[str]] = {}  # org → event ids stored

    def restore(self, stored: Iterable[tuple[Any, ...]]) -> None:
        """Rebuild from stored rows (RESTORE_COLUMNS), in source order."""
        self._states.clear()
        self._seen.clear()
        for *columns, status in stored:
            event_id, org_id = columns[0], columns[1]
            self._seen.setdefault(org_id, set()).add(event_id)
            if status != "accepted":
                continue
            event = ACCOUNT_EVENT_ADAPTER.validate_python(event_from_row(columns))
            before = self._states.get(org_id)
            outcome = apply_account_event(before, event, self._book)
            if not isinstance(outcome, Rejected):
                self._states[org_id] = outcome.state
                continue
            # Stored as accepted, refused now: the price book lost the version it was
            # priced with. The stored outcome stands (it is what was decided); the rules
            # alone give the state after it.
            log.warning("stored event %s of %s is refused on replay: %s", event_id, org_id, outcome)
            state = next_state(before, event)
            if isinstance(state, Rejected):  # corrupt history: keep the org as it was
                continue
            self._states[org_id] = state

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
        outcome = apply_account_event(self._states.get(event.org_id), event, self._book)
        if isinstance(outcome, Rejected):
            return account_row(
                event,
                after=self._states.get(event.org_id),
                rejection=outcome.reason.value,
                source=record,
            )
        self._states[event.org_id] = outcome.state
        return account_row(event, after=outcome.state, rejection=None, source=record)

    def state(self, org_id: str) -> OrgAccount | None:
        return self._states.get(org_id)
