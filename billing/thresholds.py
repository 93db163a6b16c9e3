"""Which notification thresholds a spend has reached (R17), exactly.

The processor records each (subject, threshold, month) it has notified and emits only
the reached ones it has not recorded yet — so a duplicate, a replay or a lowered cap
never notifies twice, and a threshold reached by a cap change still notifies once.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction


def threshold_reached(spend_nano_usd: int, cap_nano_usd: int | None, fraction: Decimal) -> bool:
    """spend ≥ fraction × cap, compared in exact rationals (no rounding of the product)."""
    if cap_nano_usd is None:
        return False
    exact = Fraction(fraction)
    return spend_nano_usd * exact.denominator >= exact.numerator * cap_nano_usd


def reached_thresholds(
    spend_nano_usd: int, cap_nano_usd: int | None, fractions: Iterable[Decimal]
) -> list[Decimal]:
    """The thresholds this spend has reached, in ascending order."""
    return sorted(f for f in fractions if threshold_reached(spend_nano_usd, cap_nano_usd, f))
