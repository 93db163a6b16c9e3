"""Field types shared by every event: bounded ids, UTC timestamps, token counts."""

from __future__ import annotations

from datetime import UTC, datetime
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


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str),
]
"""A timestamp that must carry a zone on the wire and is held in UTC."""


class Contract(BaseModel):
    """Base of every wire model: unknown fields are an error, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
