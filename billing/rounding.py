"""Money on documents (SPEC §2): exact nano-dollars (or exact fractions of them, for
prorated seats) rounded to cents half-up, per line; a total is the sum of its rounded
lines. Half-up means half away from zero, so a credit line of −0.005 is −0.01, the
mirror of its debit."""

from __future__ import annotations

from fractions import Fraction

NANOS_PER_CENT = 10_000_000


def to_cents(amount_nano_usd: int | Fraction) -> int:
    """Whole cents, half away from zero."""
    cents = Fraction(amount_nano_usd) / NANOS_PER_CENT
    magnitude = abs(cents)
    whole = int(magnitude + Fraction(1, 2))  # floor(|x| + ½)
    return whole if cents >= 0 else -whole


def format_cents(cents: int) -> str:
    """12345 → "123.45", −5 → "-0.05" (SPEC §2: a decimal string)."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def dollars_and_cents(amount_nano_usd: int) -> str:
    """An amount as people read it (the console, `metering dashboard`): cents, rounded
    like a document's lines; 23_894_255_250 → "23.89". Display only: never summed."""
    return format_cents(to_cents(amount_nano_usd))


def parse_cents(amount: str) -> int:
    """ "-12.34" → -1234: the inverse of `format_cents`."""
    sign = -1 if amount.startswith("-") else 1
    whole, _, part = amount.lstrip("-").partition(".")
    return sign * (int(whole) * 100 + int(part or 0))
