"""The price-book file format (SPEC §5): token rates and seat prices, versioned.

Each version is a complete snapshot that applies from its `effective_from` date
(00:00 UTC) until the next version's; the rate that prices an event is the one in force
at its `occurred_at` (R8). Rates are USD per million tokens, as vendors publish them.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.account import SeatType
from schemas.common import Contract, Id
from schemas.money import NanoUsd

TOKENS_PER_MILLION = 1_000_000


def _whole_nanos_per_token(nano_usd_per_million: int) -> int:
    # Cost must be exact in nano-dollars (R8), so every per-token rate is a whole number
    # of nano-dollars: a per-million rate needs at most three decimals ($0.001/MTok).
    if nano_usd_per_million % TOKENS_PER_MILLION:
        raise PydanticCustomError(
            "invalid_money", "a per-million-token rate may have at most 3 decimals"
        )
    return nano_usd_per_million


RatePerMillionTokens = Annotated[NanoUsd, AfterValidator(_whole_nanos_per_token)]


class ModelRates(Contract):
    input: RatePerMillionTokens
    output: RatePerMillionTokens
    cache_write: RatePerMillionTokens
    cache_read: RatePerMillionTokens


class SeatPrice(Contract):
    monthly_fee: NanoUsd
    # Legacy seat-based seats include usage valued at API rates (R6); zero elsewhere.
    monthly_usage_allowance: NanoUsd = 0


class PriceVersion(Contract):
    effective_from: date
    models: Annotated[dict[Id, ModelRates], Field(min_length=1)]
    seats: dict[SeatType, SeatPrice]

    @model_validator(mode="after")
    def _every_seat_priced(self) -> PriceVersion:
        missing = sorted(set(SeatType) - set(self.seats))
        if missing:
            raise ValueError(f"no price for seat types {missing}")
        return self


class PriceBookFile(Contract):
    currency: Literal["USD"]
    versions: Annotated[list[PriceVersion], Field(min_length=1)]

    @model_validator(mode="after")
    def _versions_in_order(self) -> PriceBookFile:
        dates = [version.effective_from for version in self.versions]
        if dates != sorted(set(dates)):
            raise ValueError("versions must be in strictly increasing effective_from order")
        return self
