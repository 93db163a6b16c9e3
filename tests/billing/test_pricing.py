"""Pricing usage at the standard API rate in force when it happened (R8, SPEC §5).

Expected costs are worked out by hand from the SPEC §5 table and written as literals:
a rate of R USD per million tokens is R × 1000 nano-dollars per token.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from billing.pricing import (
    PriceBook,
    UnknownModel,
    cost_nano_usd,
    default_price_book_text,
    price_usage,
)
from schemas.account import SeatType
from schemas.common import MAX_TOKENS_PER_EVENT
from schemas.usage import UsageEvent
from schemas.validation import Reason

# SPEC §5, copied as decimal strings (USD per million tokens): the independent reference.
SPEC_RATES: dict[str, dict[str, str]] = {
    "claude-opus-4-5": {"input": "5.00", "output": "25.00", "write": "6.25", "read": "0.50"},
    "claude-opus-4-1": {"input": "15.00", "output": "75.00", "write": "18.75", "read": "1.50"},
    "claude-sonnet-4-5": {"input": "3.00", "output": "15.00", "write": "3.75", "read": "0.30"},
    "claude-haiku-4-5": {"input": "1.00", "output": "5.00", "write": "1.25", "read": "0.10"},
}
MODELS = sorted(SPEC_RATES)
TOKEN_FIELD = {
    "input": "input_tokens",
    "output": "output_tokens",
    "write": "cache_creation_input_tokens",
    "read": "cache_read_input_tokens",
}
WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.from_json(default_price_book_text())


def usage(
    model: str,
    *,
    input: int = 0,
    output: int = 0,
    write: int = 0,
    read: int = 0,
    occurred_at: datetime = WHEN,
) -> UsageEvent:
    return UsageEvent(
        event_id="evt_1",
        org_id="org_acme",
        user_id="u_42",
        surface="claude_code",
        model=model,
        input_tokens=input,
        output_tokens=output,
        cache_creation_input_tokens=write,
        cache_read_input_tokens=read,
        occurred_at=occurred_at,
    )


def one_kind(model: str, kind: str, tokens: int, occurred_at: datetime = WHEN) -> UsageEvent:
    """An event carrying `tokens` of one token kind (input/output/write/read) only."""
    counts = dict.fromkeys(TOKEN_FIELD, 0)
    counts[kind] = tokens
    return usage(
        model,
        input=counts["input"],
        output=counts["output"],
        write=counts["write"],
        read=counts["read"],
        occurred_at=occurred_at,
    )


def two_version_book(**new_sonnet: str) -> PriceBook:
    """The shipped book plus a version from 2026-06-01 with other sonnet rates."""
    doc = json.loads(default_price_book_text())
    newer = copy.deepcopy(doc["versions"][-1])
    newer["effective_from"] = "2026-06-01"
    newer["models"]["claude-sonnet-4-5"].update(new_sonnet)
    doc["versions"].append(newer)
    return PriceBook.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    ("model", "kind", "tokens", "expected_nano_usd"),
    [
        # One million tokens cost the per-million rate, in nano-dollars.
        ("claude-opus-4-5", "input", 1_000_000, 5_000_000_000),
        ("claude-opus-4-5", "output", 1_000_000, 25_000_000_000),
        ("claude-opus-4-5", "write", 1_000_000, 6_250_000_000),
        ("claude-opus-4-5", "read", 1_000_000, 500_000_000),
        ("claude-opus-4-1", "input", 1_000_000, 15_000_000_000),
        ("claude-opus-4-1", "output", 1_000_000, 75_000_000_000),
        ("claude-opus-4-1", "write", 1_000_000, 18_750_000_000),
        ("claude-opus-4-1", "read", 1_000_000, 1_500_000_000),
        ("claude-sonnet-4-5", "input", 1_000_000, 3_000_000_000),
        ("claude-sonnet-4-5", "output", 1_000_000, 15_000_000_000),
        ("claude-sonnet-4-5", "write", 1_000_000, 3_750_000_000),
        ("claude-sonnet-4-5", "read", 1_000_000, 300_000_000),
        ("claude-haiku-4-5", "input", 1_000_000, 1_000_000_000),
        ("claude-haiku-4-5", "output", 1_000_000, 5_000_000_000),
        ("claude-haiku-4-5", "write", 1_000_000, 1_250_000_000),
        ("claude-haiku-4-5", "read", 1_000_000, 100_000_000),
        # One token costs the per-million rate × 1000 nano-dollars.
        ("claude-opus-4-5", "input", 1, 5_000),
        ("claude-opus-4-5", "output", 1, 25_000),
        ("claude-opus-4-5", "write", 1, 6_250),
        ("claude-opus-4-5", "read", 1, 500),
        ("claude-opus-4-1", "input", 1, 15_000),
        ("claude-opus-4-1", "output", 1, 75_000),
        ("claude-opus-4-1", "write", 1, 18_750),
        ("claude-opus-4-1", "read", 1, 1_500),
        ("claude-sonnet-4-5", "input", 1, 3_000),
        ("claude-sonnet-4-5", "output", 1, 15_000),
        ("claude-sonnet-4-5", "write", 1, 3_750),
        ("claude-sonnet-4-5", "read", 1, 300),
        ("claude-haiku-4-5", "input", 1, 1_000),
        ("claude-haiku-4-5", "output", 1, 5_000),
        ("claude-haiku-4-5", "write", 1, 1_250),
        ("claude-haiku-4-5", "read", 1, 100),
        # Odd counts, multiplied out by hand.
        ("claude-opus-4-5", "input", 1_234, 6_170_000),
        ("claude-opus-4-1", "write", 777, 14_568_750),
        ("claude-opus-4-1", "read", 3, 4_500),
        ("claude-sonnet-4-5", "write", 1_234, 4_627_500),
        ("claude-sonnet-4-5", "read", 999_999, 299_999_700),
        ("claude-haiku-4-5", "output", 10_000_000, 50_000_000_000),
        ("claude-haiku-4-5", "write", 7, 8_750),
        # Zero tokens cost nothing.
        ("claude-opus-4-1", "output", 0, 0),
    ],
)
def test_cost_of_one_token_kind_per_model(
    book: PriceBook, model: str, kind: str, tokens: int, expected_nano_usd: int
) -> None:
    """Each model's rate for each token kind prices tokens exactly as SPEC §5 says."""
    # Given an event carrying only one kind of token
    event = one_kind(model, kind, tokens)
    # When it is priced with the shipped price book
    cost = cost_nano_usd(event, book)
    # Then the cost is the hand-computed number of nano-dollars
    assert cost == expected_nano_usd


def test_spec_example_event_cost(book: PriceBook) -> None:
    """The SPEC §4 example (sonnet-4-5: 1200 in, 350 out, 0 cache write, 4000 cache read)
    costs 1200×3000 + 350×15000 + 4000×300 = 10_050_000 nano-dollars ($0.01005)."""
    # Given the SPEC example event
    event = usage("claude-sonnet-4-5", input=1200, output=350, write=0, read=4000)
    # When it is priced
    priced = price_usage(event, book)
    # Then it costs 10_050_000 nano-dollars under the 2025-01-01 version
    assert priced.cost_nano_usd == 10_050_000
    assert priced.price_version == date(2025, 1, 1)


def test_largest_event_on_the_dearest_model(book: PriceBook) -> None:
    """MAX_TOKENS_PER_EVENT of every kind on opus-4-1 costs exactly $1102.50."""
    # Given 10M tokens of each kind on claude-opus-4-1
    event = usage(
        "claude-opus-4-1",
        input=10_000_000,
        output=10_000_000,
        write=10_000_000,
        read=10_000_000,
    )
    # When it is priced
    cost = cost_nano_usd(event, book)
    # Then it is 10M × (15000 + 75000 + 18750 + 1500) nano = 1_102_500_000_000 nano
    assert cost == 1_102_500_000_000


def test_unknown_model_is_refused(book: PriceBook) -> None:
    """A model the price book does not list is `unknown_model`, not a zero cost."""
    # Given an event for a model without a price
    event = usage("claude-mystery-9", input=1000)
    # When it is priced
    with pytest.raises(UnknownModel) as caught:
        price_usage(event, book)
    # Then it is refused with the unknown_model reason and names the model
    assert caught.value.reason is Reason.UNKNOWN_MODEL
    assert caught.value.reason.value == "unknown_model"
    assert caught.value.model == "claude-mystery-9"
    assert "claude-mystery-9" in caught.value.detail


def test_event_before_the_first_version_is_unknown_model(book: PriceBook) -> None:
    """An event before the first version's effective_from (2025-01-01) has no price."""
    # Given events one microsecond before and exactly at 2025-01-01T00:00:00Z
    before = usage(
        "claude-sonnet-4-5",
        input=1_000_000,
        occurred_at=datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    )
    at_start = usage(
        "claude-sonnet-4-5", input=1_000_000, occurred_at=datetime(2025, 1, 1, tzinfo=UTC)
    )
    # When both are priced
    with pytest.raises(UnknownModel) as caught:
        price_usage(before, book)
    priced = price_usage(at_start, book)
    # Then the earlier one is unknown_model and the other is priced by the first version
    assert caught.value.reason is Reason.UNKNOWN_MODEL
    assert caught.value.when == datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert priced.cost_nano_usd == 3_000_000_000
    assert priced.price_version == date(2025, 1, 1)


@pytest.mark.parametrize(
    ("occurred_at", "expected_cost", "expected_version"),
    [
        pytest.param(
            datetime(2026, 5, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            3_000_000_000,
            date(2025, 1, 1),
            id="last-microsecond-of-old-version",
        ),
        pytest.param(
            datetime(2026, 6, 1, 0, 0, 0, tzinfo=UTC),
            2_500_000_000,
            date(2026, 6, 1),
            id="first-instant-of-new-version",
        ),
        pytest.param(
            datetime(2026, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            3_000_000_000,
            date(2025, 1, 1),
            id="june-1st-at-+02:00-is-still-may-31st-utc",
        ),
        pytest.param(
            datetime(2026, 5, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))),
            2_500_000_000,
            date(2026, 6, 1),
            id="may-31st-at--05:00-is-june-1st-utc",
        ),
        pytest.param(
            datetime(2030, 1, 1, tzinfo=UTC),
            2_500_000_000,
            date(2026, 6, 1),
            id="long-after",
        ),
    ],
)
def test_rate_in_force_at_occurred_at_applies(
    occurred_at: datetime, expected_cost: int, expected_version: date
) -> None:
    """With two versions, an event is priced by the version in force at its occurred_at
    (versions start at 00:00 UTC), and the priced usage names that version."""
    # Given a book whose sonnet input rate drops from 3.00 to 2.50 on 2026-06-01
    book = two_version_book(input="2.50")
    event = usage("claude-sonnet-4-5", input=1_000_000, occurred_at=occurred_at)
    # When the event is priced
    priced = price_usage(event, book)
    # Then the rate and version are the ones in force at that instant
    assert priced.cost_nano_usd == expected_cost
    assert priced.price_version == expected_version


def test_token_rates_pick_the_version_by_utc_date() -> None:
    """`token_rates` judges the version by the UTC date of `when`, whatever its offset."""
    # Given the two-version book and instants near midnight in other zones
    book = two_version_book(input="2.50")
    may_31_utc = datetime(2026, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    june_1_utc = datetime(2026, 5, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    # When the sonnet rates are looked up at those instants
    old_rates, old_version = book.token_rates("claude-sonnet-4-5", may_31_utc)
    new_rates, new_version = book.token_rates("claude-sonnet-4-5", june_1_utc)
    # Then the local date does not matter: 3000 nano per input token, then 2500
    assert (old_rates.input, old_version) == (3_000, date(2025, 1, 1))
    assert (new_rates.input, new_version) == (2_500, date(2026, 6, 1))
    assert (old_rates.output, old_rates.cache_write, old_rates.cache_read) == (15_000, 3_750, 300)


def test_other_models_keep_their_rate_across_versions() -> None:
    """A new version changes only what it changes: haiku costs the same on both sides."""
    # Given the two-version book
    book = two_version_book(input="2.50", output="12.00")
    old = usage("claude-haiku-4-5", output=1_000, occurred_at=datetime(2026, 5, 1, tzinfo=UTC))
    new = usage("claude-haiku-4-5", output=1_000, occurred_at=datetime(2026, 7, 1, tzinfo=UTC))
    sonnet_new = usage(
        "claude-sonnet-4-5", output=1_000, occurred_at=datetime(2026, 7, 1, tzinfo=UTC)
    )
    # When each is priced
    # Then haiku output is 5000 nano per token in both, sonnet output 12000 in the new one
    assert price_usage(old, book).cost_nano_usd == 5_000_000
    assert price_usage(new, book).cost_nano_usd == 5_000_000
    assert price_usage(sonnet_new, book).cost_nano_usd == 12_000_000
    assert price_usage(new, book).price_version == date(2026, 6, 1)


def test_model_dropped_in_a_later_version_is_unknown_after_the_switch() -> None:
    """A model absent from the version in force is unknown_model, even if an older
    version priced it."""
    # Given a book whose 2026-06-01 version no longer lists claude-opus-4-1
    doc = json.loads(default_price_book_text())
    newer = copy.deepcopy(doc["versions"][0])
    newer["effective_from"] = "2026-06-01"
    del newer["models"]["claude-opus-4-1"]
    doc["versions"].append(newer)
    book = PriceBook.from_json(json.dumps(doc))
    # When opus-4-1 usage is priced before and after the switch
    before = usage("claude-opus-4-1", read=2, occurred_at=datetime(2026, 5, 31, tzinfo=UTC))
    after = usage("claude-opus-4-1", read=2, occurred_at=datetime(2026, 6, 1, tzinfo=UTC))
    # Then it is priced before and refused after
    assert cost_nano_usd(before, book) == 3_000
    with pytest.raises(UnknownModel) as caught:
        cost_nano_usd(after, book)
    assert caught.value.reason is Reason.UNKNOWN_MODEL


def _book_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(default_price_book_text())
    return doc


def test_rate_with_three_decimals_is_accepted() -> None:
    """A per-million rate of 0.001 USD is one nano-dollar per token: allowed and exact."""
    # Given a book where haiku cache reads cost 0.001 USD per million tokens
    doc = _book_doc()
    doc["versions"][0]["models"]["claude-haiku-4-5"]["cache_read"] = "0.001"
    # When it is loaded and one cache-read token is priced
    book = PriceBook.from_json(json.dumps(doc))
    # Then the token costs exactly 1 nano-dollar
    assert cost_nano_usd(usage("claude-haiku-4-5", read=1), book) == 1


def test_rate_with_four_decimals_is_rejected() -> None:
    """A per-million rate with four decimals ("0.0001") would make a token cost a
    fraction of a nano-dollar, so the book is refused."""
    # Given a book with a cache_read rate of 0.0001 USD per million tokens
    doc = _book_doc()
    doc["versions"][0]["models"]["claude-haiku-4-5"]["cache_read"] = "0.0001"
    # When it is loaded
    with pytest.raises(ValidationError) as caught:
        PriceBook.from_json(json.dumps(doc))
    # Then it is refused at that rate for having too many decimals
    (error,) = caught.value.errors()
    assert error["type"] == "invalid_money"
    assert error["loc"] == ("versions", 0, "models", "claude-haiku-4-5", "cache_read")
    assert "at most 3 decimals" in error["msg"]


@pytest.mark.parametrize(
    "dates",
    [
        pytest.param(["2026-06-01", "2025-01-01"], id="descending"),
        pytest.param(["2025-01-01", "2025-01-01"], id="duplicate"),
        pytest.param(["2025-01-01", "2027-01-01", "2026-01-01"], id="last-out-of-order"),
    ],
)
def test_versions_out_of_order_are_rejected(dates: list[str]) -> None:
    """Versions must be listed in strictly increasing effective_from order."""
    # Given a book whose versions are not strictly increasing
    doc = _book_doc()
    template = doc["versions"][0]
    doc["versions"] = [{**copy.deepcopy(template), "effective_from": d} for d in dates]
    # When it is loaded
    # Then it is refused
    with pytest.raises(ValidationError, match="strictly increasing effective_from"):
        PriceBook.from_json(json.dumps(doc))


def test_versions_in_order_are_accepted() -> None:
    """The same versions in increasing order load fine (the check is not over-eager)."""
    # Given three versions in increasing order
    doc = _book_doc()
    template = doc["versions"][0]
    dates = ["2025-01-01", "2026-01-01", "2027-01-01"]
    doc["versions"] = [{**copy.deepcopy(template), "effective_from": d} for d in dates]
    # When it is loaded
    book = PriceBook.from_json(json.dumps(doc))
    # Then all three versions are there
    assert [v.effective_from for v in book.versions] == [
        date(2025, 1, 1),
        date(2026, 1, 1),
        date(2027, 1, 1),
    ]


@pytest.mark.parametrize("seat", ["enterprise", "chat", "chat_claude_code", "standard", "premium"])
def test_version_missing_a_seat_type_is_rejected(seat: str) -> None:
    """Every version prices every seat type; a version without one is refused."""
    # Given a second version that lacks one seat type
    doc = _book_doc()
    newer = copy.deepcopy(doc["versions"][0])
    newer["effective_from"] = "2026-06-01"
    del newer["seats"][seat]
    doc["versions"].append(newer)
    # When it is loaded
    with pytest.raises(ValidationError) as caught:
        PriceBook.from_json(json.dumps(doc))
    # Then it is refused for that version and names the seat type
    (error,) = caught.value.errors()
    assert error["loc"] == ("versions", 1)
    assert seat in error["msg"]


@pytest.mark.parametrize(
    "rate",
    [pytest.param(3, id="json-number"), pytest.param("-3.00", id="negative")],
)
def test_rate_that_is_not_a_money_string_is_rejected(rate: object) -> None:
    """A rate must be a non-negative decimal string like every other amount."""
    # Given a book with a malformed sonnet input rate
    doc = _book_doc()
    doc["versions"][0]["models"]["claude-sonnet-4-5"]["input"] = rate
    # When it is loaded
    with pytest.raises(ValidationError) as caught:
        PriceBook.from_json(json.dumps(doc))
    # Then it is refused as money
    assert caught.value.errors()[0]["type"] == "invalid_money"


@pytest.mark.parametrize(
    ("seat", "monthly_fee", "allowance"),
    [
        (SeatType.ENTERPRISE, 40_000_000_000, 0),
        (SeatType.CHAT, 30_000_000_000, 0),
        (SeatType.CHAT_CLAUDE_CODE, 60_000_000_000, 0),
        (SeatType.STANDARD, 30_000_000_000, 25_000_000_000),
        (SeatType.PREMIUM, 150_000_000_000, 125_000_000_000),
    ],
)
def test_seat_prices(book: PriceBook, seat: SeatType, monthly_fee: int, allowance: int) -> None:
    """Seat prices per user per month are the SPEC §5 defaults, with the legacy seat-based
    seats including 25.00 (standard) and 125.00 (premium) of usage."""
    # Given the shipped price book
    # When a seat price is looked up for a day in the current version
    price = book.seat_price(seat, date(2026, 11, 24))
    # Then the monthly fee and usage allowance are the SPEC amounts in nano-dollars
    assert price.monthly_fee == monthly_fee
    assert price.monthly_usage_allowance == allowance


def test_seat_price_before_the_first_version_is_not_found(book: PriceBook) -> None:
    """There is no seat price before the first version's effective_from."""
    # Given the shipped book, whose first version starts 2025-01-01
    # When a seat price is looked up for 2024-12-31
    # Then it is not found
    with pytest.raises(LookupError):
        book.seat_price(SeatType.ENTERPRISE, date(2024, 12, 31))


# --- properties -----------------------------------------------------------------------

TOKENS = st.integers(min_value=0, max_value=MAX_TOKENS_PER_EVENT)
EVENTS = st.builds(
    usage,
    model=st.sampled_from(MODELS),
    input=TOKENS,
    output=TOKENS,
    write=TOKENS,
    read=TOKENS,
    occurred_at=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
    ),
)


def reference_cost(event: UsageEvent) -> int:
    """tokens × Fraction(rate USD per million) / 10^6 × 10^9, summed over token kinds,
    from the SPEC §5 decimal strings."""
    rates = SPEC_RATES[event.model]
    total = Fraction(0)
    for kind, field in TOKEN_FIELD.items():
        tokens = getattr(event, field)
        total += tokens * Fraction(rates[kind]) / 10**6 * 10**9
    assert total.denominator == 1, "SPEC rates give whole nano-dollars per token"
    return int(total)


@given(EVENTS)
def test_cost_equals_the_fraction_reference(event: UsageEvent) -> None:
    """For any event on a priced model, the cost is an exact non-negative int equal to
    the rational-arithmetic reference computed from SPEC §5."""
    # Given the shipped price book and any event
    book = PriceBook.from_json(default_price_book_text())
    # When it is priced
    cost = cost_nano_usd(event, book)
    # Then it is an int (not a float, not a bool), non-negative, and exact
    assert type(cost) is int
    assert cost >= 0
    assert cost == reference_cost(event)


@given(EVENTS)
def test_cost_is_additive_over_token_kinds(event: UsageEvent) -> None:
    """The cost of an event is the sum of the costs of its token kinds priced apart."""
    # Given any event, and four events each carrying one of its token kinds
    book = PriceBook.from_json(default_price_book_text())
    parts = [
        one_kind(event.model, kind, getattr(event, field), event.occurred_at)
        for kind, field in TOKEN_FIELD.items()
    ]
    # When all five are priced
    whole = cost_nano_usd(event, book)
    part_costs = [cost_nano_usd(part, book) for part in parts]
    # Then the whole is the sum of the parts, and no part is negative
    assert whole == sum(part_costs)
    assert all(part >= 0 for part in part_costs)


@given(EVENTS, st.integers(min_value=1, max_value=MAX_TOKENS_PER_EVENT))
def test_more_tokens_never_cost_less(event: UsageEvent, extra: int) -> None:
    """Adding input tokens to an event never lowers its cost (rates are positive)."""
    # Given any event and the same event with more input tokens (capped at the max)
    book = PriceBook.from_json(default_price_book_text())
    bigger_input = min(event.input_tokens + extra, MAX_TOKENS_PER_EVENT)
    bigger = usage(
        event.model,
        input=bigger_input,
        output=event.output_tokens,
        write=event.cache_creation_input_tokens,
        read=event.cache_read_input_tokens,
        occurred_at=event.occurred_at,
    )
    # When both are priced
    # Then the bigger one costs at least as much, strictly more if it has more tokens
    if bigger_input > event.input_tokens:
        assert cost_nano_usd(bigger, book) > cost_nano_usd(event, book)
    else:
        assert cost_nano_usd(bigger, book) == cost_nano_usd(event, book)
