"""Document assembly (SPEC §2 rounding, R3/R4 seat invoices, R11 statements, R12
invoices, G5 adjustments): exact examples and properties."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given
from hypothesis import strategies as st

from billing.documents import (
    LateUsage,
    Purchase,
    SeatFee,
    UsageTotal,
    added_seat_invoice,
    annual_seat_invoice,
    credit_statement,
    monthly_seat_invoice,
    usage_invoice,
)
from billing.proration import term_end

USD = 10**9
HALF_CENT = 5 * 10**6


def test_each_line_is_rounded_and_the_total_is_the_sum_of_the_lines() -> None:
    usage = [
        UsageTotal("bob", "claude-haiku-4-5", 1000, HALF_CENT),  # 0.005 → 0.01
        UsageTotal("ann", "claude-sonnet-4-5", 2000, HALF_CENT),
        UsageTotal("ann", "claude-haiku-4-5", 3000, HALF_CENT - 1),  # 0.004999… → 0.00
    ]
    invoice = usage_invoice("org_x", "2026-11", usage)
    assert [(line.user_id, line.model, line.quantity, line.amount) for line in invoice.lines] == [
        ("ann", "claude-haiku-4-5", "3000", "0.00"),
        ("ann", "claude-sonnet-4-5", "2000", "0.01"),
        ("bob", "claude-haiku-4-5", "1000", "0.01"),
    ]
    assert invoice.total == "0.02"  # not round(0.014999…) = 0.01
    assert invoice.document_id == "org_x.usage_invoice.2026-11.001"
    assert (invoice.period_start, invoice.period_end) == (date(2026, 11, 1), date(2026, 12, 1))
    assert invoice.issued_at == datetime(2026, 12, 1, tzinfo=UTC)


def test_the_same_inputs_give_the_same_bytes() -> None:
    usage = [UsageTotal("ann", "claude-opus-4-5", 10, 123_456_789)]
    first = usage_invoice("org_x", "2026-12", usage).model_dump_json()
    assert first == usage_invoice("org_x", "2026-12", list(reversed(usage))).model_dump_json()
    assert first.startswith('{"document_id":"org_x.usage_invoice.2026-12.001","org_id":"org_x"')
    assert '"period_end":"2027-01-01"' in first


def test_late_usage_is_an_adjustment_line_on_the_next_document() -> None:
    late = [LateUsage("2026-10", "ann", "claude-haiku-4-5", 500, 2 * USD)]
    invoice = usage_invoice("org_x", "2026-11", [], late)
    assert len(invoice.lines) == 1
    assert invoice.lines[0].description.startswith("Adjustment: claude-haiku-4-5 usage in 2026-10")
    assert invoice.total == "2.00"


def test_a_credit_statement_adds_up_and_chains() -> None:
    purchases = [Purchase("p1", datetime(2026, 11, 2, tzinfo=UTC), 50 * USD)]
    usage = [UsageTotal("ann", "claude-haiku-4-5", 1, 60 * USD + HALF_CENT)]
    november, closing = credit_statement(
        "org_s", "2026-11", opening_cents=1000, purchases=purchases, usage=usage
    )
    # 10.00 + 50.00 − 60.01 = −0.01: an in-flight event may overdraw (R11)
    assert (november.opening_balance, november.purchases, november.usage) == (
        "10.00",
        "50.00",
        "60.01",
    )
    assert november.closing_balance == "-0.01" and closing == -1
    december, _ = credit_statement(
        "org_s", "2026-12", opening_cents=closing, purchases=[], usage=[]
    )
    assert december.opening_balance == december.closing_balance == "-0.01"
    assert december.lines == []


def test_seat_invoices_follow_r3_and_r4() -> None:
    start = date(2026, 1, 1)
    annual = annual_seat_invoice("org_e", start, [SeatFee("enterprise", 50, 40 * USD)])
    assert annual.total == "24000.00"  # 50 × 40 × 12
    assert (annual.period_start, annual.period_end) == (start, term_end(start))
    on_the_first = added_seat_invoice(
        "org_e",
        term_start=start,
        added_at=datetime(2026, 4, 1, 9, tzinfo=UTC),
        fees=[SeatFee("enterprise", 10, 40 * USD)],
        sequence=2,
    )
    assert on_the_first.total == "3600.00"  # 10 × 40 × 9
    mid_month = added_seat_invoice(
        "org_e",
        term_start=start,
        added_at=datetime(2026, 4, 15, 9, tzinfo=UTC),
        fees=[SeatFee("enterprise", 10, 40 * USD)],
        sequence=3,
    )
    assert mid_month.total == "3413.33"  # 10 × 40 × (8 + 16/30)
    assert "8.5333 months remaining" in mid_month.lines[0].description
    assert mid_month.document_id == "org_e.seat_invoice.2026-01-01.003"
    assert mid_month.issued_at == datetime(2026, 4, 15, 9, tzinfo=UTC)
    legacy = monthly_seat_invoice(
        "org_l", "2026-11", [SeatFee("premium", 2, 150 * USD), SeatFee("standard", 3, 30 * USD)]
    )
    assert [line.amount for line in legacy.lines] == ["300.00", "90.00"]
    assert legacy.total == "390.00"


amounts = st.integers(min_value=0, max_value=10**13)
totals = st.lists(
    st.builds(
        UsageTotal,
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["m1", "m2"]),
        st.integers(0, 10**9),
        amounts,
    ),
    max_size=12,
)


@given(totals)
def test_total_is_the_sum_of_rounded_lines(usage: list[UsageTotal]) -> None:
    invoice = usage_invoice("org", "2026-11", usage)
    cents = sum(int(line.amount.replace(".", "")) for line in invoice.lines)
    assert int(invoice.total.replace(".", "")) == cents
    assert len(invoice.lines) == len(usage)
    # each line within half a cent of its exact amount
    for line, item in zip(invoice.lines, sorted(usage), strict=True):
        assert abs(int(line.amount.replace(".", "")) * 10**7 - item.amount_nano_usd) <= HALF_CENT
