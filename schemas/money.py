"""Money on the wire: decimal strings in, integer nano-dollars inside.

SPEC §2: every amount is an integer count of nano-dollars (1 USD = 10^9) and JSON carries
money as a decimal string. Floats never appear: a JSON number is refused for money,
because `0.1` has already lost precision by the time a parser hands it to us.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

NANOS_PER_USD = 1_000_000_000

# Bounds (docs/decisions.md › Money bounds). Every store of money is 64-bit: Redis
# counters (INCRBY), ClickHouse Int64 columns, Kafka consumers in other languages; a
# signed 64-bit integer holds ±9.22 × 10^18 nano-dollars (±$9.2 billion). Amounts and
# totals are held an order of magnitude below that, so no sum we make can wrap:
MAX_AMOUNT_NANO_USD = 10**18
"""Any one amount: a credit purchase, a spend cap, a price-book rate or fee
($1,000,000,000.00)."""
MAX_TOTAL_NANO_USD = 10**18
"""Any accumulated amount: the credits an org ever bought (refused beyond it:
`balance_limit_exceeded`), a month's spend of an org or a member, and the size of a
balance either way (usage beyond it: `amount_out_of_range`)."""
MAX_EVENT_COST_NANO_USD = 10**15
"""One usage event ($1,000,000; the default price book's dearest event costs ~$1,100):
below 2^53, so the Lua scripts' per-event arithmetic on doubles stays exact."""
MAX_AMOUNT_TEXT = "1000000000.00"

# Up to MAX_AMOUNT_NANO_USD with nano precision: nine integer digits, or exactly 10^9.
MONEY_PATTERN = r"^(?:(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,9})?|1000000000(?:\.0{1,9})?)$"
# What looks like money at all (checked first, so an amount over the bound is told so).
_MONEY_RE = re.compile(r"(0|[1-9][0-9]{0,29})(\.[0-9]{1,9})?")


class MoneyOutOfRange(ValueError):
    """A well-formed amount above MAX_AMOUNT_NANO_USD."""


def parse_usd(text: str) -> int:
    """`"12.5"` → 12_500_000_000. Raises ValueError for anything that is not a plain
    non-negative decimal string with at most nine decimals, and `MoneyOutOfRange` (a
    ValueError) for one above MAX_AMOUNT_NANO_USD."""
    # fullmatch: `$` alone would accept a trailing newline ("5\n").
    if not isinstance(text, str) or not _MONEY_RE.fullmatch(text):
        shown = text[:40] if isinstance(text, str) else text
        raise ValueError(f"not a decimal money string: {shown!r}")
    whole, _, frac = text.partition(".")
    nano = int(whole) * NANOS_PER_USD + int(frac.ljust(9, "0"))
    if nano > MAX_AMOUNT_NANO_USD:
        raise MoneyOutOfRange(f"more than {MAX_AMOUNT_TEXT} USD: {text[:40]}")
    return nano


def format_usd(nano_usd: int) -> str:
    """Exact inverse of `parse_usd` (negative amounts allowed): trailing zeros beyond
    cents are dropped, cents always shown, e.g. 1_500_000_000 → "1.50"."""
    sign = "-" if nano_usd < 0 else ""
    whole, frac = divmod(abs(nano_usd), NANOS_PER_USD)
    frac_digits = f"{frac:09d}".rstrip("0")
    frac_digits = frac_digits.ljust(2, "0")
    return f"{sign}{whole}.{frac_digits}"


def _money_before(value: object, info: ValidationInfo) -> int:
    # Python callers hand us nano-dollars already; only the wire format is a string.
    if info.mode == "python" and isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise PydanticCustomError("invalid_money", "money must not be negative")
        if value > MAX_AMOUNT_NANO_USD:
            raise PydanticCustomError(
                "invalid_money", "money must be at most {bound} USD", {"bound": MAX_AMOUNT_TEXT}
            )
        return value
    return _money_string(value)


def _money_string(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise PydanticCustomError(
            "invalid_money",
            'money must be a decimal string such as "12.50", got {got}',
            {"got": type(value).__name__},
        )
    try:
        return parse_usd(value)
    except MoneyOutOfRange:
        raise PydanticCustomError(
            "invalid_money",
            "money must be at most {bound} USD, got '{value}'",
            {"bound": MAX_AMOUNT_TEXT, "value": value[:40]},
        ) from None
    except ValueError:
        raise PydanticCustomError(
            "invalid_money",
            "money must be a non-negative decimal string with at most 9 decimals, got '{value}'",
            {"value": value[:40]},
        ) from None


NanoUsd = Annotated[
    int,
    BeforeValidator(_money_before),
    PlainSerializer(format_usd, return_type=str),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "description": "USD amount"}),
]
"""A money field: a decimal string on the wire, an `int` of nano-dollars in Python."""


def _positive(nano_usd: int) -> int:
    if nano_usd <= 0:
        raise PydanticCustomError("invalid_money", "amount must be greater than zero")
    return nano_usd


PositiveNanoUsd = Annotated[NanoUsd, AfterValidator(_positive)]

_MONEY_SCHEMA = WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "description": "USD"})
StrictNanoUsd = Annotated[
    int, BeforeValidator(_money_string), PlainSerializer(format_usd, return_type=str), _MONEY_SCHEMA
]
"""Money in a body that arrives as already-decoded JSON (HTTP requests): always a
decimal string, never a number — a JSON 5 must not become five nano-dollars."""
PositiveStrictNanoUsd = Annotated[StrictNanoUsd, AfterValidator(_positive)]


_SIGNED_MONEY_RE = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,9})?$")


def _amount_out(value: object, info: ValidationInfo) -> int:
    if info.mode == "python" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _SIGNED_MONEY_RE.fullmatch(value):
        sign, digits = (-1, value[1:]) if value.startswith("-") else (1, value)
        whole, _, frac = digits.partition(".")
        return sign * (int(whole) * NANOS_PER_USD + int(frac.ljust(9, "0")))
    raise PydanticCustomError(
        "invalid_money",
        'money must be a decimal string such as "-12.50", got {got}',
        {"got": type(value).__name__},
    )


UsdAmount = Annotated[
    int,
    BeforeValidator(_amount_out),
    PlainSerializer(format_usd, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _SIGNED_MONEY_RE.pattern,
            "description": "USD, exact to the nano-dollar (up to 9 decimals); may be negative",
        }
    ),
]
"""Money the pipeline writes (notifications, the usage API): an `int` of nano-dollars in
Python, an exact decimal string of USD on the wire — never a JSON number, which
JavaScript clients round above 2^53 (about $9M in nano-dollars)."""
