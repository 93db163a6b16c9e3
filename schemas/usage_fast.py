"""The usage event's fast path: msgspec decoding and direct canonical encoding.

The usage hot path parses every event; pydantic's validation and `model_dump_json` cost
~7 µs per event together. Here a usage event in the common wire form — every field of
the right JSON type and within bounds, `occurred_at` as RFC 3339 with at most six
fractional digits — is decoded by msgspec with the same constraints, and its canonical
bytes are msgspec's encoding of what it decoded (fields in the canonical order, the
timestamp in its canonical text). Anything else, valid or not, is left to
`schemas.validation.parse_usage_event` (`parse_usage_fast` returns None), which is the
authority: it decides every reason code. A property test holds the two equal on
everything the fast path accepts (tests/schemas/test_usage_fast.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, cast

import msgspec

from schemas.common import (
    EARLIEST_DATE,
    ID_MAX_LENGTH,
    LATEST_DATE,
    MAX_TOKENS_PER_EVENT,
    format_timestamp,
)
from schemas.usage import Surface, UsageEvent, UsageFacts
from schemas.validation import MAX_CLOCK_SKEW, MAX_EVENT_BYTES, encode_event

# schemas.common.ID_PATTERN, anchored with \Z: Python's `$` would also match before a
# trailing newline, which pydantic's (Rust) regex does not.
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]*\Z"
_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=_ID_PATTERN)]
# Org, user and model ids repeat from event to event: their pattern is checked once per
# distinct value (below) instead of by msgspec on every event (~0.3 µs a match).
_REPEATED_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH)]
_ID_MATCH = re.compile(_ID_PATTERN).match
_VALID_IDS: set[str] = set()
_MAX_VALID_IDS = 1 << 16  # then forgotten and checked again: memory stays bounded
_TOKENS = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_EVENT)]
# RFC 3339 with at most six fractional digits and a zone; checked in `parse_usage_fast`
# after the (cheaper) test for the canonical form our emitter writes.
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")
_SURFACES = {surface.value: surface for surface in Surface}


class _WireUsage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # In the canonical field order: encoded again, it is the canonical form once
    # `occurred_at` is (see `_canonical_timestamp`).
    event_id: _ID
    org_id: _REPEATED_ID
    user_id: _REPEATED_ID
    surface: str
    model: _REPEATED_ID
    input_tokens: _TOKENS
    output_tokens: _TOKENS
    cache_creation_input_tokens: _TOKENS = 0
    cache_read_input_tokens: _TOKENS = 0
    occurred_at: str


_DECODER = msgspec.json.Decoder(_WireUsage)
_ENCODE = msgspec.json.Encoder().encode
# Already canonical: UTC with a `Z` and six fractional digits, as our emitter writes it.
_CANONICAL_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class FastUsage(msgspec.Struct, frozen=True):
    """A valid usage event as the fast path decoded it: `UsageEvent`'s fields and values
    (held equal by the property test), without building a pydantic model (~4 µs)."""

    event_id: str
    org_id: str
    user_id: str
    surface: Surface
    model: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    occurred_at: datetime
    canonical: bytes  # `encode_event` of the same event, byte for byte


def parse_usage_fast(raw: bytes, *, now: datetime) -> FastUsage | None:
    """The event, when it is in the common wire form and valid; None otherwise (then
    `parse_usage_event` decides, with its reason code)."""
    if len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        wire = _DECODER.decode(raw)
        canonical = _CANONICAL_TIMESTAMP.fullmatch(wire.occurred_at) is not None
        if not canonical and _TIMESTAMP.fullmatch(wire.occurred_at) is None:
            return None
        occurred = datetime.fromisoformat(wire.occurred_at).astimezone(UTC)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, OverflowError):
        return None  # OverflowError: year 1 or 9999 with an offset past the calendar
    for repeated in (wire.org_id, wire.user_id, wire.model):
        if repeated not in _VALID_IDS:
            if _ID_MATCH(repeated) is None:
                return None
            if len(_VALID_IDS) >= _MAX_VALID_IDS:
                _VALID_IDS.clear()
            _VALID_IDS.add(repeated)
    surface = _SURFACES.get(wire.surface)
    if (
        surface is None
        or not EARLIEST_DATE <= occurred.date() <= LATEST_DATE
        or occurred > now + MAX_CLOCK_SKEW
    ):
        return None
    if not canonical:
        wire.occurred_at = format_timestamp(occurred)
    return FastUsage(
        wire.event_id,
        wire.org_id,
        wire.user_id,
        surface,
        wire.model,
        wire.input_tokens,
        wire.output_tokens,
        wire.cache_creation_input_tokens,
        wire.cache_read_input_tokens,
        occurred,
        _ENCODE(wire),
    )


def canonical_usage_json(event: UsageFacts) -> bytes:
    """`schemas.validation.encode_event(event)`: kept from the fast path's decoding, or
    encoded by pydantic for an event that came the slow way."""
    if isinstance(event, FastUsage):
        return event.canonical
    return encode_event(cast(UsageEvent, event))
