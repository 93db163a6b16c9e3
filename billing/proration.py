"""Seat fees over an annual term (R3, R4).

R4's `remaining_months` counts the addition's month by days — the days left in it,
counting the addition day, over the days in that month — plus every later calendar month
up to the term's end. A term that starts mid-month ends mid-month; its last month is
counted the same way (the days of it still inside the term over its length), which
reduces to the SPEC's formula for terms that start on the 1st.
"""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction

MONTHS_PER_TERM = 12


def term_end(term_start: date) -> date:
    """The first day after a one-year term (Feb 29 starts end on Mar 1)."""
    try:
        return term_start.replace(year=term_start.year + 1)
    except ValueError:  # Feb 29 → no Feb 29 next year
        return date(term_start.year + 1, 3, 1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def remaining_months(term_start: date, added_on: date) -> Fraction:
    """R4: exact months left in the term from `added_on` (inclusive)."""
    end = term_end(term_start)
    if not term_start <= added_on < end:
        raise ValueError(f"{added_on} is outside the term {term_start} – {end}")
    months = Fraction(0)
    day = added_on
    while day < end:
        month_start, following = day.replace(day=1), _next_month(day)
        stop = min(following, end)
        months += Fraction((stop - day).days, (following - month_start).days)
        day = stop
    return months


def rest_of_month(day: date) -> Fraction:
    """The days left in `day`'s month, counting `day`, over the days in that month: R4's
    first term, used alone for legacy seats, which are billed by the month (R6)."""
    month_start, following = day.replace(day=1), _next_month(day)
    return Fraction((following - day).days, (following - month_start).days)


def term_containing(term_start: date, day: date) -> date:
    """The start of the annual term that contains `day`: a contract that was not renewed
    explicitly rolls over on its anniversary (a day before `term_start` belongs to the
    first term)."""
    start = term_start
    while day >= term_end(start):
        start = term_end(start)
    return start


def annual_seat_fee(quantity: int, monthly_fee_nano_usd: int) -> int:
    """R3: seats × monthly price × 12, invoiced at term start."""
    return quantity * monthly_fee_nano_usd * MONTHS_PER_TERM


def added_seat_fee(
    quantity: int, monthly_fee_nano_usd: int, term_start: date, added_on: date
) -> Fraction:
    """R4: quantity × monthly price × remaining_months — exact, rounded only on the
    document line."""
    return quantity * monthly_fee_nano_usd * remaining_months(term_start, added_on)
