"""Money on the wire (SPEC §2): decimal strings in, integer nano-dollars inside."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.money import MAX_AMOUNT_NANO_USD, MoneyOutOfRange, NanoUsd, format_usd, parse_usd


@pytest.mark.parametrize(
    ("text", "nano_usd"),
    [
        ("0", 0),
        ("0.00", 0),
        ("1", 1_000_000_000),
        ("12.5", 12_500_000_000),
        ("12.50", 12_500_000_000),
        ("1234.50", 1_234_500_000_000),
        ("0.000000001", 1),
        ("0.1", 100_000_000),
        ("999999999.999999999", 999_999_999_999_999_999),
        ("1000000000", 10**18),  # the largest amount there is (MAX_AMOUNT_NANO_USD)
        ("1000000000.000000000", 10**18),
    ],
)
def test_parse_usd_examples(text: str, nano_usd: int) -> None:
    """A plain decimal string is read as an exact count of nano-dollars."""
    # Given a money string from the wire
    # When it is parsed
    parsed = parse_usd(text)
    # Then it is exactly the expected integer of nano-dollars
    assert parsed == nano_usd
    assert type(parsed) is int


@pytest.mark.parametrize(
    ("nano_usd", "text"),
    [
        (0, "0.00"),
        (1, "0.000000001"),
        (1_000_000_000, "1.00"),
        (1_500_000_000, "1.50"),
        (1_230_000_000, "1.23"),
        (1_234_000_000, "1.234"),
        (12_345_678_901, "12.345678901"),
        (-5, "-0.000000005"),
        (-1_500_000_000, "-1.50"),
    ],
)
def test_format_usd_examples(nano_usd: int, text: str) -> None:
    """Nano-dollars are written with cents always shown and no trailing zeros past them."""
    # Given an amount in nano-dollars
    # When it is formatted for the wire
    formatted = format_usd(nano_usd)
    # Then it is the expected decimal string
    assert formatted == text


@pytest.mark.parametrize(
    "text",
    [
        "1e3",
        "-1",
        "+1",
        "1.0000000001",
        " 1",
        "1 ",
        "01",
        "00.5",
        "",
        ".5",
        "1.",
        "1,5",
        "1_000",
        "NaN",
        "Infinity",
        "1" * 31,  # thirty-one integer digits: not even a number we would read
    ],
)
def test_parse_usd_rejects_anything_but_a_plain_decimal(text: str) -> None:
    """A string that is not a plain non-negative decimal with at most nine decimals is
    refused rather than guessed at."""
    # Given a malformed money string
    # When it is parsed
    # Then it is refused
    with pytest.raises(ValueError, match="not a decimal money string"):
        parse_usd(text)


@pytest.mark.parametrize("value", [1, 1.5, None, b"1"])
def test_parse_usd_rejects_non_strings(value: object) -> None:
    """Money that is not a string (a number, bytes, nothing) is refused."""
    # Given a value that is not a str
    # When it is parsed
    # Then it is refused
    with pytest.raises(ValueError, match="not a decimal money string"):
        parse_usd(value)  # type: ignore[arg-type]


def test_parse_usd_rejects_a_trailing_newline() -> None:
    """A money string with a trailing newline is not a plain decimal and is refused."""
    # Given a money string followed by a newline
    # When it is parsed
    # Then it is refused like any other stray whitespace (" 1", "1 ")
    with pytest.raises(ValueError):
        parse_usd("5\n")


@pytest.mark.parametrize(
    "text", ["1000000000.000000001", "1000000000.01", "5000000000.00", "999999999999.00"]
)
def test_parse_usd_refuses_more_than_the_largest_amount(text: str) -> None:
    """An amount above $1,000,000,000 (10^18 nano-dollars) is refused, saying so: every
    store of money is 64-bit, and sums of such amounts must not wrap (issue 20)."""
    with pytest.raises(MoneyOutOfRange, match=r"more than 1000000000\.00 USD"):
        parse_usd(text)
    assert MAX_AMOUNT_NANO_USD == 10**18


def test_money_fields_name_the_bound() -> None:
    """In a model, the refusal says what the bound is (and never echoes a long input)."""

    class Priced(BaseModel):
        amount: NanoUsd

    with pytest.raises(ValidationError, match=r"at most 1000000000\.00 USD") as caught:
        Priced.model_validate_json('{"amount": "' + "9" * 25 + '"}')
    assert "9" * 41 not in str(caught.value)
    with pytest.raises(ValidationError, match="at most"):
        Priced(amount=10**18 + 1)  # nano-dollars handed over in Python
    assert Priced(amount=10**18).amount == 10**18


@given(st.integers(min_value=0, max_value=MAX_AMOUNT_NANO_USD))
def test_format_then_parse_is_the_identity(nano_usd: int) -> None:
    """Any amount from zero to the largest survives the wire unchanged."""
    # Given any amount in nano-dollars
    # When it is formatted and parsed back
    # Then it is the same amount
    assert parse_usd(format_usd(nano_usd)) == nano_usd


@given(
    whole=st.integers(min_value=0, max_value=10**9 - 1),
    frac=st.text(alphabet="0123456789", min_size=1, max_size=9),
)
def test_parse_usd_matches_digit_arithmetic(whole: int, frac: str) -> None:
    """Parsing `W.F` gives W × 10^9 plus F padded to nine digits, with no rounding."""
    # Given a decimal string built from an integer part and up to nine decimals
    text = f"{whole}.{frac}"
    # When it is parsed
    parsed = parse_usd(text)
    # Then it equals the value computed digit by digit
    assert parsed == whole * 1_000_000_000 + int(frac.ljust(9, "0"))


@given(st.integers(min_value=1, max_value=10**21 - 1))
def test_negative_amounts_format_as_the_negated_positive(nano_usd: int) -> None:
    """A negative amount is written as its magnitude with a leading minus sign."""
    # Given a positive amount
    # When its negation is formatted
    # Then it is "-" followed by the positive amount's text
    assert format_usd(-nano_usd) == "-" + format_usd(nano_usd)
