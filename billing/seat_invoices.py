"""Seat invoices are immediate (R3, R4, R6, R7): each accepted account event that gives
an org seats to pay for yields its invoice at once, as a pure function of the org's
state before and after the event. The ClickHouse sink runs this beside the ledger fold,
so an invoice exists as soon as its event is stored, and a replay of the account log
yields the same invoices with the same ids.

- `org.created`, `contract.renewed` (usage-based): the annual invoice of the term (R3).
- `seats.added` (usage-based): the rest of the term (R4).
- `plan.migration_requested`: the new enterprise seats for the rest of the term (R7).
- legacy seat-based seats arriving mid-month (`org.created`, `seats.added`): the rest of
  that month (R6); whole months come with the monthly invoice of the batch.
- `seats.removed` never yields anything: there is no mid-term credit (R5).

Each usage-based seat is paid once per term: the invoicer remembers how many seats of
each type it has invoiced for each term, and a term's annual invoice charges only the
seats beyond those. That matters when a renewal is recorded after the anniversary: seats
added in the rolled-over term were already invoiced for it (docs/decisions.md).
"""

from __future__ import annotations

from datetime import date

from billing.accounts import OrgAccount
from billing.documents import (
    SeatFee,
    added_seat_invoice,
    annual_seat_invoice,
    midnight,
    rest_of_month_seat_invoice,
)
from billing.monthly import seat_fees
from billing.pricing import PriceBook
from billing.proration import term_containing
from schemas.account import (
    AccountEvent,
    ContractRenewed,
    OrgCreated,
    Plan,
    PlanMigrationRequested,
    SeatsAdded,
    SeatType,
)
from schemas.documents import Document


class SeatInvoicer:
    """Issues seat invoices and numbers them: a sequence per org and period (a term's
    start date, or a month for legacy seats, whose 001 is the monthly invoice)."""

    def __init__(self, book: PriceBook) -> None:
        self._book = book
        self._issued: dict[tuple[str, str], int] = {}
        # (org, term start) → seats already invoiced for that term, by type.
        self._term_seats: dict[tuple[str, str], dict[SeatType, int]] = {}

    def _sequence(self, org_id: str, period: str, first: int = 1) -> int:
        sequence = max(self._issued.get((org_id, period), first - 1) + 1, first)
        self._issued[(org_id, period)] = sequence
        return sequence

    def _fees(self, seats: dict[SeatType, int], on: date) -> list[SeatFee]:
        return seat_fees(self._book, seats, on)

    def _invoiced_for_term(self, org_id: str, term_start: date) -> dict[SeatType, int]:
        return self._term_seats.setdefault((org_id, term_start.isoformat()), {})

    def _record(self, org_id: str, term_start: date, seats: dict[SeatType, int]) -> None:
        invoiced = self._invoiced_for_term(org_id, term_start)
        for seat, n in seats.items():
            invoiced[seat] = invoiced.get(seat, 0) + n

    def _not_yet_invoiced(
        self, org_id: str, term_start: date, held: dict[SeatType, int]
    ) -> dict[SeatType, int]:
        """The seats of `held` that the term has not been invoiced for yet."""
        invoiced = self._invoiced_for_term(org_id, term_start)
        due = {seat: n - invoiced.get(seat, 0) for seat, n in held.items()}
        return {seat: n for seat, n in due.items() if n > 0}

    def on_accepted(
        self, before: OrgAccount | None, event: AccountEvent, after: OrgAccount
    ) -> list[Document]:
        """The seat invoices `event` creates (usually none)."""
        match event:
            case OrgCreated() | ContractRenewed():
                return self._new_term(event, after)
            case SeatsAdded():
                return self._added(event, after, {event.data.seat_type: event.data.quantity})
            case PlanMigrationRequested() if before is not None:
                return self._added(event, after, dict(after.seats), why="migrated")
        return []

    def _new_term(self, event: AccountEvent, after: OrgAccount) -> list[Document]:
        if after.plan is Plan.SEAT_BASED:  # legacy seats from creation: the rest of the month
            return self._added(event, after, dict(after.seats))
        term_start = date.fromisoformat(after.term_start)
        due = self._not_yet_invoiced(after.org_id, term_start, after.seats)
        fees = self._fees(due, term_start)
        if not fees:
            return []
        self._record(after.org_id, term_start, due)
        sequence = self._sequence(after.org_id, term_start.isoformat())
        invoice = annual_seat_invoice(
            after.org_id,
            term_start,
            fees,
            issued_at=max(event.occurred_at, midnight(term_start)),
            sequence=sequence,
        )
        return [invoice]

    def _added(
        self,
        event: AccountEvent,
        after: OrgAccount,
        seats: dict[SeatType, int],
        why: str = "added",
    ) -> list[Document]:
        day = event.occurred_at.date()
        fees = self._fees(seats, day)
        if not fees:
            return []
        if after.plan is Plan.SEAT_BASED:
            period = day.strftime("%Y-%m")
            return [
                rest_of_month_seat_invoice(
                    after.org_id,
                    added_at=event.occurred_at,
                    fees=fees,
                    sequence=self._sequence(after.org_id, period, first=2),
                )
            ]
        term_start = term_containing(date.fromisoformat(after.term_start), day)
        self._record(after.org_id, term_start, seats)
        invoice = added_seat_invoice(
            after.org_id,
            term_start=term_start,
            added_at=event.occurred_at,
            fees=fees,
            sequence=self._sequence(after.org_id, term_start.isoformat()),
            why=why,
        )
        return [invoice]
