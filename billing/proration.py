"""Seat fees over an annual term (R3, R4).

R4's `remaining_months` counts the addition's month by days — the days left in it,
counting the addition day, over the days in that month — plus every later month up to
the term's end. The months are the term's own: they run from the term's day of the month
to the same day of the next month (clamped to the month's end: a term starting Jan 31 has
a month Feb 28 – Mar 31). For a term that starts on the 1st these are the calendar
months, exactly the formula of R4; for any other start a whole term is exactly 12 months,
so a seat is never billed for more than the year it is paid for (docs/decisions.md).
"""

from __future__ import annotations

import calendar
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


def _months_after(start: date, months: int) -> date:
    """`start` moved by whole months, on the same day of the month or the month's last."""
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def term_month_bounds(term_start: date) -> list[date]:
    """The 13 boundaries of the term's 12 months: the term's start, the start of each
    following term month, and the term's end."""
    return [_months_after(term_start, k) for k in range(MONTHS_PER_TERM)] + [term_end(term_start)]


def remaining_months(term_start: date, added_on: date) -> Fraction:
    """R4: exact months left in the term from `added_on` (inclusive): the days left in
    its term month over that month's length, plus the whole term months after it."""
    bounds = term_month_bounds(term_start)
    if not bounds[0] <= added_on < bounds[-1]:
        raise ValueError(f"{added_on} is outside the term {term_start} – {bounds[-1]}")
    for index in range(MONTHS_PER_TERM):
        month_start, following = bounds[index], bounds[index + 1]
        if added_on < following:
            whole_after = MONTHS_PER_TERM - index - 1
            return whole_after + Fraction(
                (following - added_on).days, (following - month_start).days
            )
    raise AssertionError("unreachable: added_on is inside the term")  # pragma: no cover


def rest_of_month(day: date) -> Fraction:
    """The days left in `day`'s month, counting `day`, over the days in that month: R4's
    first term, used alone for legacy seats, which are billed by the calendar month (R6)."""
    month_start, following = day.replace(day=1), _next_month(day)
    return Fraction((following - day).days, (following - month_start).days)


def term_containing(term_start: date, day: date) -> date:
    """The start of the annual term that contains `day`: a contract rolls over on its
    anniversary (a day before `term_start` belongs to the first term)."""
    start = term_start
    while day >= term_end(start):
        start = term_end(start)
    return start


def anniversaries_until(term_start: date, day: date) -> list[date]:
    """The starts of the terms after `term_start` that have begun by `day` (inclusive):
    the renewals a contract that started on `term_start` is due by then (R3, R7)."""
    due = []
    start = term_end(term_start)
    while start <= day:
        due.append(start)
        start = term_end(start)
    return due


def annual_seat_fee(quantity: int, monthly_fee_nano_usd: int) -> int:
    """R3: seats × monthly price × 12, invoiced at term start."""
    return quantity * monthly_fee_nano_usd * MONTHS_PER_TERM


def added_seat_fee(
    quantity: int, monthly_fee_nano_usd: int, term_start: date, added_on: date
) -> Fraction:
    """R4: quantity × monthly price × remaining_months — exact, rounded only on the
    document line."""
    return quantity * monthly_fee_nano_usd * remaining_months(term_start, added_on)
