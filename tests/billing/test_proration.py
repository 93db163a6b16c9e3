"""R3/R4 seat fees and SPEC §2 rounding, with the SPEC's own examples."""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.proration import (
    added_seat_fee,
    annual_seat_fee,
    remaining_months,
    term_end,
)
from billing.rounding import format_cents, to_cents

USD = 10**9
ENTERPRISE = 40 * USD


def test_the_spec_examples() -> None:
    # Term starts Jan 1 with 50 seats; 10 seats added Apr 1 → 10 × price × 9
    assert remaining_months(date(2026, 1, 1), date(2026, 4, 1)) == 9
    assert added_seat_fee(10, ENTERPRISE, date(2026, 1, 1), date(2026, 4, 1)) == 10 * 40 * USD * 9
    # Added Apr 15 → 10 × price × (8 + 16/30)
    assert remaining_months(date(2026, 1, 1), date(2026, 4, 15)) == 8 + Fraction(16, 30)
    assert annual_seat_fee(50, ENTERPRISE) == 50 * 40 * 12 * USD


def test_term_edges() -> None:
    assert remaining_months(date(2026, 1, 1), date(2026, 1, 1)) == 12
    assert remaining_months(date(2026, 1, 1), date(2026, 12, 31)) == Fraction(1, 31)
    assert term_end(date(2028, 2, 29)) == date(2029, 3, 1)
    # a mid-month term: Mar 15 → next Mar 15; added Mar 15 is the whole year
    assert remaining_months(date(2026, 3, 15), date(2026, 3, 15)) == 12
    with pytest.raises(ValueError, match="outside the term"):
        remaining_months(date(2026, 1, 1), date(2027, 1, 1))


def test_a_whole_term_is_twelve_months_whatever_day_it_starts() -> None:
    """R4 on a term that does not start on the 1st: counting days against calendar
    months, a term starting 2028-02-20 (29 days in that February, 28 in the next) came
    to 12 + 1/35 months, so a seat added on its first day was billed for more than the
    year. Term months (the 20th to the 20th) make it exactly 12, and the SPEC's own
    formula is unchanged for terms on the 1st (test_the_spec_examples)."""
    assert remaining_months(date(2028, 2, 20), date(2028, 2, 20)) == 12
    assert remaining_months(date(2027, 1, 31), date(2027, 1, 31)) == 12
    assert remaining_months(date(2028, 2, 29), date(2028, 2, 29)) == 12
    # Mid-way through the term month Feb 20 – Mar 20 (29 days): 11 + 14/29 left.
    assert remaining_months(date(2028, 2, 20), date(2028, 3, 6)) == 11 + Fraction(14, 29)


days = st.integers(min_value=0, max_value=364)
starts = st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 1)).map(
    lambda d: d.replace(day=min(d.day, 28))
)


@given(starts, days)
def test_remaining_months_shrink_day_by_day_within_one_term(start: date, offset: int) -> None:
    day = start + timedelta(days=offset)
    if day >= term_end(start):
        return
    months = remaining_months(start, day)
    assert 0 < months <= 12
    assert (months == 12) == (day == start)
    following = day + timedelta(days=1)
    if following < term_end(start):
        assert remaining_months(start, following) < months


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_rounding_is_half_away_from_zero_and_symmetric(nano: int) -> None:
    cents = to_cents(nano)
    assert abs(nano - cents * 10**7) <= 5 * 10**6  # within half a cent
    assert to_cents(-nano) == -cents
    if abs(nano) % 10**7 == 5 * 10**6:  # exactly half a cent: away from zero
        assert abs(cents * 10**7) > abs(nano)


def test_cents_format() -> None:
    assert [format_cents(c) for c in (0, 5, 123456, -5, -100)] == [
        "0.00",
        "0.05",
        "1234.56",
        "-0.05",
        "-1.00",
    ]
    assert (
        to_cents(Fraction(10 * 40 * USD * 256, 30)) == 341_333
    )  # $3,413.33 = 10 × $40 × (8 + 16/30)
