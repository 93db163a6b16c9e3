"""Pricing a usage event at the standard API rate in force when it happened (R8).

cost = Σ tokens × per-token rate, in integer nano-dollars. The price-book format
guarantees every per-token rate is a whole number of nano-dollars, so the product is
exact and no rounding happens here.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources

from schemas.account import SeatType
from schemas.price_book import (
    TOKENS_PER_MILLION,
    ModelRates,
    PriceBookFile,
    PriceVersion,
    SeatPrice,
)
from schemas.usage import UsageEvent, UsageFacts
from schemas.validation import Reason


class UnknownModel(LookupError):
    """No rate for this model at this time. Dead-lettered `unknown_model`; re-drivable
    once the price book has the model."""

    reason = Reason.UNKNOWN_MODEL

    def __init__(self, model: str, when: datetime, detail: str) -> None:
        super().__init__(f"unknown_model: {detail}")
        self.model = model
        self.when = when
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TokenRates:
    """Nano-dollars per single token, by token kind."""

    input: int
    output: int
    cache_write: int
    cache_read: int

    @classmethod
    def from_per_million(cls, rates: ModelRates) -> TokenRates:
        return cls(
            input=rates.input // TOKENS_PER_MILLION,
            output=rates.output // TOKENS_PER_MILLION,
            cache_write=rates.cache_write // TOKENS_PER_MILLION,
            cache_read=rates.cache_read // TOKENS_PER_MILLION,
        )


@dataclass(frozen=True, slots=True)
class PricedUsage:
    cost_nano_usd: int
    price_version: date  # the `effective_from` of the version that priced it


class PriceBook:
    """Versioned token rates and seat prices, looked up by time."""

    def __init__(self, spec: PriceBookFile) -> None:
        self._versions = spec.versions
        self._starts = [version.effective_from for version in spec.versions]
        self._rates = [
            {model: TokenRates.from_per_million(r) for model, r in version.models.items()}
            for version in spec.versions
        ]

    @classmethod
    def from_json(cls, text: str | bytes) -> PriceBook:
        return cls(PriceBookFile.model_validate_json(text))

    @property
    def versions(self) -> list[PriceVersion]:
        return list(self._versions)

    def _index_at(self, day: date) -> int | None:
        index = bisect.bisect_right(self._starts, day) - 1
        return index if index >= 0 else None

    def token_rates(self, model: str, when: datetime) -> tuple[TokenRates, date]:
        """The per-token rates of `model` in force at `when`, and their version date."""
        index = self._index_at(when.astimezone(UTC).date())
        if index is None:
            raise UnknownModel(
                model, when, f"no price book version is in force at {when.isoformat()}"
            )
        rates = self._rates[index].get(model)
        if rates is None:
            raise UnknownModel(
                model,
                when,
                f"model {model!r} has no price in the version effective from {self._starts[index]}",
            )
        return rates, self._starts[index]

    def version_on(self, day: date) -> PriceVersion:
        index = self._index_at(day)
        if index is None:
            raise LookupError(f"no price book version is in force on {day}")
        return self._versions[index]

    def seat_price(self, seat_type: SeatType, on: date) -> SeatPrice:
        """Raises LookupError before the first version (a seat fee cannot be guessed)."""
        return self.version_on(on).seats[seat_type]

    def usage_allowance(self, seat_type: SeatType, on: date) -> int:
        """The seat's monthly usage allowance (R6) in force on `on`, in nano-USD. Before
        the first version, the first version's: an allowance is looked up for the first
        day of a month, which may come before a price book that starts mid-month, and
        enforcement must never fail on it (usage itself is priced at its own time)."""
        index = self._index_at(on)
        version = self._versions[index if index is not None else 0]
        return version.seats[seat_type].monthly_usage_allowance


def price_usage(event: UsageFacts, book: PriceBook) -> PricedUsage:
    """Price one event exactly. Raises `UnknownModel`."""
    rates, version = book.token_rates(event.model, event.occurred_at)
    cost = (
        event.input_tokens * rates.input
        + event.output_tokens * rates.output
        + event.cache_creation_input_tokens * rates.cache_write
        + event.cache_read_input_tokens * rates.cache_read
    )
    return PricedUsage(cost_nano_usd=cost, price_version=version)


def cost_nano_usd(event: UsageEvent, book: PriceBook) -> int:
    """The event's cost in nano-dollars at the rate in force at its `occurred_at` (R8)."""
    return price_usage(event, book).cost_nano_usd


def default_price_book_text() -> str:
    """The price book shipped with the package (SPEC §5)."""
    return (resources.files("billing") / "data" / "price_book.json").read_text()
