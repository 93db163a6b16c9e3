"""Field types shared by every event: bounded ids, UTC timestamps, token counts."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

# Ids become Redis keys (`{org_id}` hash tags), Kafka keys and ClickHouse values, so they
# are short and from a safe alphabet: no braces, spaces, slashes or control characters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]*$"
ID_MAX_LENGTH = 128

Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]

# The largest context windows hold about a million tokens; ten million in one call is
# not usage, it is a bug or an attack, and pricing it would bill real money.
MAX_TOKENS_PER_EVENT = 10_000_000

TokenCount = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS_PER_EVENT)]


def format_timestamp(value: datetime) -> str:
    """Canonical wire form: UTC, microseconds, `Z` suffix (`2026-11-24T12:00:00.123000Z`)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Every date and timestamp from outside lies in [2000-01-01, 2100-01-01): far wider than
# any real contract or event, and inside what every store accepts — ClickHouse `Date`
# ends in 2149 and `DateTime64` in 2299, and a term that starts on 2099-12-31 still ends
# before both; Python's `date` would overflow a term starting in year 9999.
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2099, 12, 31)


def _out_of_range(value: str) -> PydanticCustomError:
    return PydanticCustomError(
        "date_out_of_range",
        "{value} is outside the accepted range {earliest} – {latest}",
        {"value": value, "earliest": str(EARLIEST_DATE), "latest": str(LATEST_DATE)},
    )


def _in_range(day: date) -> None:
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise _out_of_range(day.isoformat())


def _to_utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 and an offset that takes it past the calendar
        raise _out_of_range(value.isoformat()) from None
    _in_range(utc.date())
    return utc


def _bounded_date(value: date) -> date:
    _in_range(value)
    return value


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str),
]
"""A timestamp that must carry a zone on the wire and is held in UTC (2000–2099)."""

BoundedDate = Annotated[date, AfterValidator(_bounded_date)]
"""A calendar date from outside (a contract's term start), 2000-01-01 – 2099-12-31."""


class Contract(BaseModel):
    """Base of every wire model: unknown fields are an error, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
