"""Seat invoices from account events (`billing.seat_invoices`, fed by the account fold):
the SPEC's R4 example, R5 removals, R7 renewal migration and R6 legacy seats mid-month."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billing.accounts import OrgAccount, Rejected, apply_account_event, renewals_due
from billing.monthly import MonthInputs, month_documents
from billing.pricing import PriceBook, default_price_book_text
from schemas.account import ACCOUNT_EVENT_ADAPTER, AccountEvent, BillingMode, Plan, SeatType
from schemas.documents import Document

BOOK = PriceBook.from_json(default_price_book_text())
ORG = "org_seats"
_ids = itertools.count()


def event(kind: str, at: datetime, data: dict[str, Any] | None = None) -> AccountEvent:
    return ACCOUNT_EVENT_ADAPTER.validate_python(
        {
            "event_id": f"e{next(_ids)}",
            "type": kind,
            "org_id": ORG,
            "occurred_at": at,
            "actor": None,
            "data": data or {},
        }
    )


def created(
    at: datetime,
    *,
    plan: str = "usage_based",
    mode: str = "sales_assisted",
    term_start: str = "2026-01-01",
    seats: dict[str, int] | None = None,
) -> AccountEvent:
    return event(
        "org.created",
        at,
        {
            "plan": plan,
            "billing_mode": mode,
            "term_start": term_start,
            "seats": seats if seats is not None else {"enterprise": 50},
        },
    )


def seats(kind: str, at: datetime, seat_type: str, quantity: int) -> AccountEvent:
    return event(kind, at, {"seat_type": seat_type, "quantity": quantity})


class Ledger:
    """The account processor's fold in miniature: each event's seat invoices, and with
    `renew`, first those of the renewals the renewal timer appends by the event's day."""

    def __init__(self) -> None:
        self.state: OrgAccount | None = None

    def _fold(self, item: AccountEvent) -> list[Document] | Rejected:
        result = apply_account_event(self.state, item, BOOK)
        if isinstance(result, Rejected):
            return result
        self.state = result.state
        return list(result.invoices)

    def renew_until(self, day: date) -> list[Document]:
        documents: list[Document] = []
        for renewal in renewals_due(self.state, day) if self.state else []:
            renewed = self._fold(renewal)
            assert not isinstance(renewed, Rejected), renewed
            documents += renewed
        return documents

    def apply(self, item: AccountEvent, *, renew: bool = False) -> list[Document] | Rejected:
        renewals = self.renew_until(item.occurred_at.date()) if renew else []
        result = self._fold(item)
        return result if isinstance(result, Rejected) else renewals + result

    def accept(self, item: AccountEvent, *, renew: bool = False) -> list[Document]:
        result = self.apply(item, renew=renew)
        assert not isinstance(result, Rejected), result
        return result


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def rows(document: Document) -> list[tuple[str, str, str]]:
    return [(line.description, line.quantity, line.amount) for line in document.lines]


def test_the_spec_r4_example_seats_added_on_the_first_and_mid_month() -> None:
    """R3 + R4: term starts Jan 1 with 50 seats (50 × 40 × 12 = 24 000.00); 10 seats
    added Apr 1 → 10 × 40 × 9 = 3 600.00; added Apr 15 → 10 × 40 × (8 + 16/30) =
    3 413.33."""
    ledger = Ledger()
    [annual] = ledger.accept(created(at(2026, 1, 1)))
    assert annual.document_id == f"{ORG}.seat_invoice.2026-01-01.001"
    assert rows(annual) == [("enterprise seats, 50 × 12 months", "50", "24000.00")]
    assert (annual.period_start, annual.period_end) == (date(2026, 1, 1), date(2027, 1, 1))
    assert annual.issued_at == at(2026, 1, 1)

    [first] = ledger.accept(seats("seats.added", at(2026, 4, 1, 9), "enterprise", 10))
    assert first.document_id == f"{ORG}.seat_invoice.2026-01-01.002"
    assert rows(first) == [
        ("10 enterprise seats added 2026-04-01, 9.0000 months remaining", "10", "3600.00")
    ]
    assert first.total == "3600.00"
    assert (first.period_start, first.period_end) == (date(2026, 4, 1), date(2027, 1, 1))
    assert first.issued_at == at(2026, 4, 1, 9)

    [mid] = ledger.accept(seats("seats.added", at(2026, 4, 15, 14, 30), "enterprise", 10))
    assert mid.document_id == f"{ORG}.seat_invoice.2026-01-01.003"
    assert rows(mid) == [
        ("10 enterprise seats added 2026-04-15, 8.5333 months remaining", "10", "3413.33")
    ]
    assert mid.total == "3413.33"
    assert mid.period_start == date(2026, 4, 15)
    assert ledger.state is not None and ledger.state.seats == {SeatType.ENTERPRISE: 70}


def test_a_self_serve_removal_waits_for_the_renewal_and_the_next_term_bills_fewer() -> None:
    """R5 as amended: a self-serve org may reduce seats; mid-term the removal is pending
    (no refund, no document, the seats stay usable), the invoice numbering goes on, and
    the renewal on the anniversary bills the seats kept: 50 − 5 + 1 = 46 × 40 × 12."""
    ledger = Ledger()
    ledger.accept(created(at(2026, 1, 1), mode="self_serve"))
    assert ledger.accept(seats("seats.removed", at(2026, 6, 10), "enterprise", 5)) == []
    assert ledger.state is not None and ledger.state.seats == {SeatType.ENTERPRISE: 50}
    assert ledger.state.pending_seat_removals == {SeatType.ENTERPRISE: 5}
    [next_one] = ledger.accept(seats("seats.added", at(2026, 7, 1), "enterprise", 1))
    assert next_one.document_id == f"{ORG}.seat_invoice.2026-01-01.002"
    assert next_one.total == "240.00"  # 1 × 40 × 6
    [renewal] = ledger.renew_until(date(2027, 1, 1))
    assert renewal.document_id == f"{ORG}.seat_invoice.2027-01-01.001"
    assert rows(renewal) == [("enterprise seats, 46 × 12 months", "46", "22080.00")]
    assert ledger.state.seats == {SeatType.ENTERPRISE: 46}
    assert ledger.state.pending_seat_removals == {}


def test_every_seat_is_paid_for_every_term_without_any_renewal_event() -> None:
    """R3 + R4 across terms (the issue's case): created 2026-01-01 with 10 seats, nothing
    else until one seat is added on 2027-03-01. The term renews by itself on 2027-01-01:
    the org pays 10 × 40 × 12 for 2026, again for 2027, and 1 × 40 × 10 for the seat of
    March — and 11 × 40 × 12 on 2028-01-01."""
    ledger = Ledger()
    [first] = ledger.accept(created(at(2026, 1, 1), seats={"enterprise": 10}), renew=True)
    renewal, added = ledger.accept(
        seats("seats.added", at(2027, 3, 1, 10), "enterprise", 1), renew=True
    )
    assert [(d.document_id, d.total) for d in (first, renewal, added)] == [
        (f"{ORG}.seat_invoice.2026-01-01.001", "4800.00"),
        (f"{ORG}.seat_invoice.2027-01-01.001", "4800.00"),
        (f"{ORG}.seat_invoice.2027-01-01.002", "400.00"),
    ]
    assert renewal.issued_at == at(2027, 1, 1)
    assert rows(renewal) == [("enterprise seats, 10 × 12 months", "10", "4800.00")]
    [third] = ledger.renew_until(date(2028, 1, 1))
    assert (third.document_id, third.total) == (f"{ORG}.seat_invoice.2028-01-01.001", "5280.00")
    assert ledger.renew_until(date(2028, 12, 31)) == []  # nothing more before 2029


def test_a_sales_assisted_removal_yields_no_credit_and_takes_effect_at_renewal() -> None:
    """R5: accepted, but no document (no mid-term refund); the next term is invoiced
    for the seats that remain."""
    ledger = Ledger()
    ledger.accept(created(at(2026, 1, 1)))
    assert ledger.accept(seats("seats.removed", at(2026, 6, 10), "enterprise", 20)) == []
    assert ledger.state is not None and ledger.state.seats == {SeatType.ENTERPRISE: 50}
    [renewal] = ledger.accept(
        event("contract.renewed", at(2027, 1, 1), {"term_start": "2027-01-01"})
    )
    assert rows(renewal) == [("enterprise seats, 30 × 12 months", "30", "14400.00")]
    assert renewal.document_id == f"{ORG}.seat_invoice.2027-01-01.001"


def test_renewal_of_a_legacy_seat_based_org_invoices_enterprise_seats_for_the_new_term() -> None:
    """R7: at renewal every legacy seat becomes an enterprise seat; the annual invoice
    of the new term (sequence 001 of its period) is 5 × 40 × 12, issued at the term's
    start."""
    ledger = Ledger()
    ledger.accept(
        created(
            at(2026, 1, 1),
            plan="seat_based",
            mode="self_serve",
            seats={"standard": 3, "premium": 2},
        )
    )
    [renewal] = ledger.accept(
        event("contract.renewed", at(2026, 12, 20, 16), {"term_start": "2027-01-01"})
    )
    assert ledger.state is not None
    assert ledger.state.plan is Plan.USAGE_BASED
    assert ledger.state.billing_mode is BillingMode.SELF_SERVE
    assert ledger.state.seats == {SeatType.ENTERPRISE: 5}
    assert renewal.document_id == f"{ORG}.seat_invoice.2027-01-01.001"
    assert rows(renewal) == [("enterprise seats, 5 × 12 months", "5", "2400.00")]
    assert renewal.total == "2400.00"
    assert (renewal.period_start, renewal.period_end) == (date(2027, 1, 1), date(2028, 1, 1))
    assert renewal.issued_at == at(2027, 1, 1)  # the later of the event and the term start


def test_a_seat_based_org_created_mid_month_pays_the_rest_of_that_month_as_002() -> None:
    """R6: legacy seats are monthly; seats that arrive mid-month are invoiced at once for
    the days left (counting the day): 4 × 30 × 21/30 = 84.00, numbered 002 of the month
    since 001 is the batch's monthly invoice; a later addition that month is 003."""
    ledger = Ledger()
    [rest] = ledger.accept(
        created(
            at(2026, 11, 10, 9, 30),
            plan="seat_based",
            term_start="2026-11-10",
            seats={"standard": 4},
        )
    )
    assert rest.document_id == f"{ORG}.seat_invoice.2026-11.002"
    assert rows(rest) == [("4 standard seats from 2026-11-10, 0.7000 of a month", "4", "84.00")]
    assert (rest.period_start, rest.period_end) == (date(2026, 11, 10), date(2026, 12, 1))
    assert rest.issued_at == at(2026, 11, 10, 9, 30)

    [added] = ledger.accept(seats("seats.added", at(2026, 11, 20), "premium", 1))
    assert added.document_id == f"{ORG}.seat_invoice.2026-11.003"
    assert added.total == "55.00"  # 1 × 150 × 11/30

    # 001 of the month belongs to the batch's monthly seat invoice: no clash.
    monthly = month_documents(
        MonthInputs(
            org_id=ORG,
            month="2026-11",
            billing_mode=BillingMode.SALES_ASSISTED,
            legacy_seats={SeatType.STANDARD: 4},
        ),
        BOOK,
    )
    assert [d.document_id for d in monthly] == [
        f"{ORG}.usage_invoice.2026-11.001",
        f"{ORG}.seat_invoice.2026-11.001",
    ]
    assert monthly[1].total == "120.00"


def test_a_pending_removal_survives_an_early_migration() -> None:
    """R5 + R7: a sales-assisted seat-based org removes 2 of its 5 seats (effective at
    renewal), then migrates early. The migration invoices the 5 seats it still holds
    for the rest of the term; at renewal the removal takes effect, so the new term is
    3 × 40 × 12 = 1 440.00 — migration must not lose the customer's removal."""
    ledger = Ledger()
    ledger.accept(
        created(at(2026, 1, 1), plan="seat_based", mode="sales_assisted", seats={"standard": 5})
    )
    assert ledger.accept(seats("seats.removed", at(2026, 3, 1), "standard", 2)) == []
    [migration] = ledger.accept(event("plan.migration_requested", at(2026, 6, 1)))
    assert rows(migration) == [
        ("5 enterprise seats migrated 2026-06-01, 7.0000 months remaining", "5", "1400.00")
    ]
    assert migration.document_id == f"{ORG}.seat_invoice.2026-01-01.001"
    [renewal] = ledger.accept(
        event("contract.renewed", at(2027, 1, 1), {"term_start": "2027-01-01"})
    )
    assert rows(renewal) == [("enterprise seats, 3 × 12 months", "3", "1440.00")]


def test_a_renewal_recorded_after_the_anniversary_does_not_bill_seats_twice() -> None:
    """R3 + R4: each seat is paid once per term. The term of Jan 1 2026 rolls over on its
    anniversary (docs/decisions.md); 5 seats added Jan 10 2027 are invoiced at once for
    the rest of the 2027 term. When sales records the renewal of that same term
    (term_start 2027-01-01) on Jan 15, its invoices for the 2027 term must not charge
    those 5 seats again: it pays 2 341.94 for the 5 and 10 × 40 × 12 for the others."""
    ledger = Ledger()
    ledger.accept(created(at(2026, 1, 1), seats={"enterprise": 10}))
    [added] = ledger.accept(seats("seats.added", at(2027, 1, 10), "enterprise", 5))
    assert added.document_id == f"{ORG}.seat_invoice.2027-01-01.001"
    assert added.total == "2341.94"  # 5 × 40 × (22/31 + 11)
    renewal = ledger.accept(
        event("contract.renewed", at(2027, 1, 15), {"term_start": "2027-01-01"})
    )
    assert [(d.document_id, rows(d)) for d in renewal] == [
        (
            f"{ORG}.seat_invoice.2027-01-01.002",
            [("enterprise seats, 10 × 12 months", "10", "4800.00")],
        )
    ]
    paid = sum(Decimal(d.total) for d in [added, *renewal])
    assert paid == Decimal("7141.94")
