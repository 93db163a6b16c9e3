"""Seat invoices are immediate (R3, R4, R6, R7): each accepted account event that gives
an org seats to pay for yields its invoice at once, as a pure function of the org's
state before and after the event and the price book. The account processor publishes
them to `billing.documents.v1` with the event's outcome, so an issued invoice is in the
log of record and a rebuild restores it byte for byte, whatever the price book says by
then.

- `org.created`, `contract.renewed` — the system's own on each anniversary, or one with
  new terms from sales — (usage-based): the annual invoice of the term (R3);
- `seats.added` (usage-based): the rest of the term (R4);
- `plan.migration_requested`: the new enterprise seats for the rest of the term (R7);
- legacy seat-based seats arriving mid-month (`org.created`, `seats.added`): the rest of
  that month (R6); whole months come with the monthly invoice of the batch;
- `seats.removed` never yields anything: there is no mid-term credit (R5).

Each usage-based seat is paid once per term: the state remembers how many seats of each
type were invoiced for each term, and a term's annual invoice charges only the seats
beyond those. That matters when the renewal is appended after other events of the new
term: seats added in it were already invoiced for it (docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from billing.account_state import Applied, OrgAccount
from billing.documents import (
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


def invoice_seats(
    before: OrgAccount | None, event: AccountEvent, after: OrgAccount, book: PriceBook
) -> Applied:
    """The seat invoices `event` issues (usually none), with `after`'s bookkeeping
    advanced. Raises LookupError when a seat must be priced on a day the price book
    has no version for (the fold refuses the event: `no_price_in_force`)."""
    match event:
        case OrgCreated() | ContractRenewed():
            return _new_term(event, after, book)
        case SeatsAdded():
            return _added(event, after, {event.data.seat_type: event.data.quantity}, book)
        case PlanMigrationRequested() if before is not None:
            return _added(event, after, dict(after.seats), book, why="migrated")
    return Applied(after)


def _issue(state: OrgAccount, period: str, first: int = 1) -> tuple[OrgAccount, int]:
    """The next sequence number of `period` (at least `first`), recorded in the state."""
    sequence = max(state.seat_invoice_sequences.get(period, first - 1) + 1, first)
    sequences = {**state.seat_invoice_sequences, period: sequence}
    return replace(state, seat_invoice_sequences=sequences), sequence


def _record(state: OrgAccount, term: date, seats: dict[SeatType, int]) -> OrgAccount:
    """Remember the seats invoiced for `term`; terms before the current one are done
    with and forgotten (bounded state)."""
    invoiced = dict(state.seats_invoiced.get(term.isoformat(), {}))
    for seat, n in seats.items():
        invoiced[seat] = invoiced.get(seat, 0) + n
    terms = {
        start: held
        for start, held in {**state.seats_invoiced, term.isoformat(): invoiced}.items()
        if start >= state.term_start
    }
    return replace(state, seats_invoiced=terms)


def _not_yet_invoiced(state: OrgAccount, term: date) -> dict[SeatType, int]:
    """The seats the org holds that `term` has not been invoiced for yet."""
    invoiced = state.seats_invoiced.get(term.isoformat(), {})
    due = {seat: n - invoiced.get(seat, 0) for seat, n in state.seats.items()}
    return {seat: n for seat, n in due.items() if n > 0}


def _new_term(event: AccountEvent, after: OrgAccount, book: PriceBook) -> Applied:
    if after.plan is Plan.SEAT_BASED:  # legacy seats from creation: the rest of the month
        return _added(event, after, dict(after.seats), book)
    term = date.fromisoformat(after.term_start)
    due = _not_yet_invoiced(after, term)
    fees = seat_fees(book, due, term)
    if not fees:
        return Applied(_record(after, term, {}))
    state, sequence = _issue(_record(after, term, due), term.isoformat())
    invoice = annual_seat_invoice(
        after.org_id,
        term,
        fees,
        issued_at=max(event.occurred_at, midnight(term)),
        sequence=sequence,
    )
    return Applied(state, (invoice,))


def _added(
    event: AccountEvent,
    after: OrgAccount,
    seats: dict[SeatType, int],
    book: PriceBook,
    why: str = "added",
) -> Applied:
    day = event.occurred_at.date()
    if after.plan is Plan.SEAT_BASED:
        fees = seat_fees(book, seats, day)
        if not fees:
            return Applied(after)
        state, sequence = _issue(after, day.strftime("%Y-%m"), first=2)
        invoice: Document = rest_of_month_seat_invoice(
            after.org_id, added_at=event.occurred_at, fees=fees, sequence=sequence
        )
        return Applied(state, (invoice,))
    term = term_containing(date.fromisoformat(after.term_start), day)
    # Seats added before the term began are billed from its start, at its prices.
    fees = seat_fees(book, seats, max(day, term))
    if not fees:
        return Applied(after)
    state, sequence = _issue(_record(after, term, seats), term.isoformat())
    invoice = added_seat_invoice(
        after.org_id,
        term_start=term,
        added_at=event.occurred_at,
        fees=fees,
        sequence=sequence,
        why=why,
    )
    return Applied(state, (invoice,))
