"""The usage event contract (SPEC §4) and the reason code of every way it can be wrong (G4)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.common import MAX_TOKENS_PER_EVENT
from schemas.usage import Surface, UsageEvent
from schemas.validation import (
    MAX_EVENT_BYTES,
    InvalidEvent,
    Reason,
    encode_event,
    parse_usage_event,
)

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)

# The example of SPEC §4, with a concrete event_id.
SPEC_EXAMPLE: dict[str, Any] = {
    "event_id": "01JD3XYZ",
    "org_id": "org_acme",
    "user_id": "u_42",
    "surface": "claude_code",
    "model": "claude-sonnet-4-5",
    "input_tokens": 1200,
    "output_tokens": 350,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 4000,
    "occurred_at": "2026-11-24T12:00:00.123Z",
}


def wire(**changes: Any) -> bytes:
    """The SPEC example as wire bytes, with some fields replaced."""
    return json.dumps({**SPEC_EXAMPLE, **changes}).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in SPEC_EXAMPLE.items() if k != field}).encode()


def test_spec_example_is_read_field_by_field() -> None:
    """The SPEC §4 example is accepted and every field keeps its meaning."""
    # Given the SPEC example on the wire
    raw = wire()
    # When it is parsed
    event = parse_usage_event(raw, now=NOW)
    # Then each field holds the value sent
    assert event.event_id == "01JD3XYZ"
    assert event.org_id == "org_acme"
    assert event.user_id == "u_42"
    assert event.surface is Surface.CLAUDE_CODE
    assert event.model == "claude-sonnet-4-5"
    assert event.input_tokens == 1200
    assert event.output_tokens == 350
    assert event.cache_creation_input_tokens == 0
    assert event.cache_read_input_tokens == 4000
    assert event.occurred_at == datetime(2026, 11, 24, 12, 0, 0, 123_000, tzinfo=UTC)


def test_valid_event_round_trips_through_the_wire() -> None:
    """A valid event, encoded and parsed again, is the same event."""
    # Given a parsed valid event
    event = parse_usage_event(wire(), now=NOW)
    # When it is encoded and parsed back
    encoded = encode_event(event)
    again = parse_usage_event(encoded, now=NOW)
    # Then it is equal, and the encoding is canonical (UTC, microseconds, `Z`)
    assert again == event
    assert encode_event(again) == encoded
    assert json.loads(encoded)["occurred_at"] == "2026-11-24T12:00:00.123000Z"


def test_optional_cache_fields_default_to_zero() -> None:
    """An event without the two optional cache fields carries zero cache tokens."""
    # Given an event without cache_creation_input_tokens and cache_read_input_tokens
    raw = {k: v for k, v in SPEC_EXAMPLE.items() if not k.startswith("cache_")}
    # When it is parsed
    event = parse_usage_event(raw, now=NOW)
    # Then both cache counts are 0, and the encoding writes them out
    assert event.cache_creation_input_tokens == 0
    assert event.cache_read_input_tokens == 0
    encoded = json.loads(encode_event(event))
    assert encoded["cache_creation_input_tokens"] == 0
    assert encoded["cache_read_input_tokens"] == 0


def test_zone_offset_is_normalised_to_utc() -> None:
    """A timestamp with a `+02:00` offset is held and re-encoded as the same instant in UTC."""
    # Given an event stamped 14:00:00.5 at +02:00 (12:00:00.5 UTC)
    raw = wire(occurred_at="2026-11-24T14:00:00.500+02:00")
    # When it is parsed and encoded
    event = parse_usage_event(raw, now=NOW)
    encoded = json.loads(encode_event(event))
    # Then it is 12:00:00.5 in UTC, held with a zero offset and written with `Z`
    assert event.occurred_at == datetime(2026, 11, 24, 12, 0, 0, 500_000, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.hour == 12
    assert encoded["occurred_at"] == "2026-11-24T12:00:00.500000Z"


@pytest.mark.parametrize("as_type", ["bytes", "str", "mapping"])
def test_mapping_and_str_parse_like_bytes(as_type: str) -> None:
    """The same event given as bytes, str or a decoded mapping parses to the same model."""
    # Given the SPEC example in one of the accepted input forms
    forms: dict[str, bytes | str | dict[str, Any]] = {
        "bytes": wire(),
        "str": wire().decode(),
        "mapping": dict(SPEC_EXAMPLE),
    }
    raw = forms[as_type]
    # When it is parsed
    event = parse_usage_event(raw, now=NOW)
    # Then it equals the event parsed from bytes
    assert event == parse_usage_event(wire(), now=NOW)


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        pytest.param(wire(input_tokens=-1), Reason.NEGATIVE_TOKENS, "input_tokens", id="negative"),
        pytest.param(
            {**SPEC_EXAMPLE, "cache_read_input_tokens": "12"},
            Reason.SCHEMA_VIOLATION,
            "cache_read_input_tokens",
            id="string-in-mapping",
        ),
        pytest.param(
            {**SPEC_EXAMPLE, "surface": "fax"}, Reason.UNKNOWN_SURFACE, "surface", id="surface"
        ),
        pytest.param({**SPEC_EXAMPLE, "extra": 1}, Reason.UNKNOWN_FIELD, "extra", id="extra"),
    ],
)
def test_mapping_is_held_to_the_wire_rules(
    raw: bytes | dict[str, Any], reason: Reason, field: str
) -> None:
    """A mapping is judged by the same rules as wire bytes: no lax coercion of "12"."""
    # Given an invalid event (bytes or mapping)
    # When it is parsed
    with pytest.raises(InvalidEvent) as caught:
        parse_usage_event(raw, now=NOW)
    # Then the reason and field are the specific ones
    assert caught.value.reason is reason
    assert caught.value.field == field


BAD_EVENTS = [
    # Not a JSON object at all
    pytest.param(b'{"event_id": "e1",', Reason.MALFORMED_JSON, "(event)", id="truncated-json"),
    pytest.param(b"{not json}", Reason.MALFORMED_JSON, "(event)", id="garbage-json"),
    pytest.param(b"", Reason.MALFORMED_JSON, "(event)", id="empty-payload"),
    pytest.param(b"\xff\xfe", Reason.MALFORMED_JSON, "(event)", id="not-utf8"),
    pytest.param(b"[1, 2]", Reason.SCHEMA_VIOLATION, "(event)", id="json-array"),
    pytest.param(b'"event"', Reason.SCHEMA_VIOLATION, "(event)", id="json-string"),
    pytest.param(b"null", Reason.SCHEMA_VIOLATION, "(event)", id="json-null"),
    # Missing / unknown fields
    pytest.param(without("event_id"), Reason.MISSING_FIELD, "event_id", id="missing-event_id"),
    pytest.param(without("model"), Reason.MISSING_FIELD, "model", id="missing-model"),
    pytest.param(
        without("output_tokens"), Reason.MISSING_FIELD, "output_tokens", id="missing-output"
    ),
    pytest.param(
        without("occurred_at"), Reason.MISSING_FIELD, "occurred_at", id="missing-occurred_at"
    ),
    pytest.param(wire(cost=1), Reason.UNKNOWN_FIELD, "cost", id="unknown-field"),
    # Token counts
    pytest.param(wire(input_tokens=-1), Reason.NEGATIVE_TOKENS, "input_tokens", id="neg-input"),
    pytest.param(
        wire(cache_read_input_tokens=-5),
        Reason.NEGATIVE_TOKENS,
        "cache_read_input_tokens",
        id="neg-cache-read",
    ),
    pytest.param(
        wire(output_tokens=MAX_TOKENS_PER_EVENT + 1),
        Reason.TOKENS_OUT_OF_RANGE,
        "output_tokens",
        id="max-plus-one",
    ),
    pytest.param(
        wire(cache_creation_input_tokens=10**30),
        Reason.TOKENS_OUT_OF_RANGE,
        "cache_creation_input_tokens",
        id="absurd-tokens",
    ),
    pytest.param(wire(input_tokens=12.0), Reason.SCHEMA_VIOLATION, "input_tokens", id="float"),
    pytest.param(wire(input_tokens=12.5), Reason.SCHEMA_VIOLATION, "input_tokens", id="frac"),
    pytest.param(wire(input_tokens="12"), Reason.SCHEMA_VIOLATION, "input_tokens", id="string"),
    pytest.param(wire(input_tokens=True), Reason.SCHEMA_VIOLATION, "input_tokens", id="bool"),
    pytest.param(wire(input_tokens=None), Reason.SCHEMA_VIOLATION, "input_tokens", id="null"),
    # Timestamps
    pytest.param(
        wire(occurred_at="2026-11-24T12:00:00"),
        Reason.NAIVE_TIMESTAMP,
        "occurred_at",
        id="naive-timestamp",
    ),
    pytest.param(
        wire(occurred_at="2026-11-24T12:00:00.123456"),
        Reason.NAIVE_TIMESTAMP,
        "occurred_at",
        id="naive-timestamp-micro",
    ),
    pytest.param(
        wire(occurred_at="yesterday"), Reason.SCHEMA_VIOLATION, "occurred_at", id="not-a-date"
    ),
    # A zone offset that takes the first or last calendar day past Python's calendar: a
    # reason, not an OverflowError that would stop the processor.
    pytest.param(
        wire(occurred_at="0001-01-01T00:00:00+01:00"),
        Reason.DATE_OUT_OF_RANGE,
        "occurred_at",
        id="before-year-1-in-utc",
    ),
    pytest.param(
        wire(occurred_at="9999-12-31T23:30:00-01:00"),
        Reason.DATE_OUT_OF_RANGE,
        "occurred_at",
        id="after-year-9999-in-utc",
    ),
    # Surface
    pytest.param(wire(surface="fax"), Reason.UNKNOWN_SURFACE, "surface", id="unknown-surface"),
    pytest.param(wire(surface="CHAT_WEB"), Reason.UNKNOWN_SURFACE, "surface", id="surface-case"),
    # Ids
    pytest.param(wire(event_id="a b"), Reason.INVALID_ID, "event_id", id="id-space"),
    pytest.param(wire(org_id="org{acme}"), Reason.INVALID_ID, "org_id", id="id-brace"),
    pytest.param(wire(user_id=""), Reason.INVALID_ID, "user_id", id="id-empty"),
    pytest.param(wire(event_id="e" * 129), Reason.INVALID_ID, "event_id", id="id-129-chars"),
    pytest.param(wire(event_id="_leading"), Reason.INVALID_ID, "event_id", id="id-leading-_"),
    pytest.param(wire(user_id="u/42"), Reason.INVALID_ID, "user_id", id="id-slash"),
    pytest.param(wire(user_id="u_42\n"), Reason.INVALID_ID, "user_id", id="id-newline"),
    pytest.param(wire(model="claude sonnet"), Reason.INVALID_ID, "model", id="model-space"),
    pytest.param(wire(event_id=42), Reason.SCHEMA_VIOLATION, "event_id", id="id-number"),
    # Size
    pytest.param(
        wire(event_id="e1", padding="x" * MAX_EVENT_BYTES),
        Reason.PAYLOAD_TOO_LARGE,
        None,
        id="oversized",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "field"), BAD_EVENTS)
def test_each_class_of_bad_input_has_its_own_reason(
    raw: bytes, reason: Reason, field: str | None
) -> None:
    """A bad usage event is refused with the specific reason code and the field at fault."""
    # Given a usage event that is wrong in exactly one way
    # When it is parsed
    with pytest.raises(InvalidEvent) as caught:
        parse_usage_event(raw, now=NOW)
    # Then the reason names the class of error and `field` names where it is
    assert caught.value.reason is reason
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{reason.value}: ")
    assert caught.value.detail


def test_a_valid_id_of_128_chars_is_accepted() -> None:
    """An id of exactly the maximum length (128) and of every allowed character is fine."""
    # Given ids at the length limit and using the whole allowed alphabet
    longest = "e" * 128
    alphabet = "A0z_.:@+-9"
    # When an event with them is parsed
    event = parse_usage_event(wire(event_id=longest, user_id=alphabet), now=NOW)
    # Then they are kept as sent
    assert event.event_id == longest
    assert event.user_id == alphabet


def test_token_counts_at_the_bounds_are_accepted() -> None:
    """Zero tokens and exactly MAX_TOKENS_PER_EVENT tokens are valid counts."""
    # Given an event with 0 and MAX_TOKENS_PER_EVENT tokens
    raw = wire(input_tokens=0, output_tokens=MAX_TOKENS_PER_EVENT)
    # When it is parsed
    event = parse_usage_event(raw, now=NOW)
    # Then both are kept
    assert event.input_tokens == 0
    assert event.output_tokens == 10_000_000


def test_payload_of_exactly_max_bytes_is_accepted_and_one_more_is_not() -> None:
    """The size limit is inclusive: MAX_EVENT_BYTES bytes pass, one byte more is refused."""
    # Given the same event padded with JSON whitespace to the limit and one byte past it
    body = wire()
    at_limit = body + b" " * (MAX_EVENT_BYTES - len(body))
    over = at_limit + b" "
    assert len(at_limit) == 16 * 1024
    # When both are parsed
    event = parse_usage_event(at_limit, now=NOW)
    with pytest.raises(InvalidEvent) as caught:
        parse_usage_event(over, now=NOW)
    # Then the first is accepted and the second is too large
    assert event.event_id == "01JD3XYZ"
    assert caught.value.reason is Reason.PAYLOAD_TOO_LARGE


def test_oversized_mapping_is_refused_too() -> None:
    """A mapping whose wire form exceeds MAX_EVENT_BYTES is refused like raw bytes."""
    # Given a mapping with a huge unknown field
    raw = {**SPEC_EXAMPLE, "padding": "x" * MAX_EVENT_BYTES}
    # When it is parsed
    with pytest.raises(InvalidEvent) as caught:
        parse_usage_event(raw, now=NOW)
    # Then it is refused for its size, before any field is looked at
    assert caught.value.reason is Reason.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize(
    ("occurred_at", "accepted"),
    [
        pytest.param("2026-11-24T12:05:00Z", True, id="exactly-5-minutes-ahead"),
        pytest.param("2026-11-24T12:05:00.000001Z", False, id="5-minutes-and-1us-ahead"),
        pytest.param("2026-11-24T14:05:00+02:00", True, id="5-minutes-ahead-at-+02:00"),
        pytest.param("2026-11-24T14:05:01+02:00", False, id="5-minutes-1s-ahead-at-+02:00"),
        pytest.param("2026-11-24T12:30:00Z", False, id="30-minutes-ahead"),
        pytest.param("2026-11-24T12:00:00Z", True, id="now"),
        pytest.param("2020-01-01T00:00:00Z", True, id="long-ago"),
    ],
)
def test_future_events_beyond_five_minutes_are_refused(occurred_at: str, accepted: bool) -> None:
    """An event more than 5 minutes after `now` is refused (`future_event`); up to and
    including 5 minutes is clock skew and is accepted."""
    # Given an event stamped relative to the injected now (12:00:00 UTC)
    raw = wire(occurred_at=occurred_at)
    # When it is parsed
    # Then it is accepted, or refused as a future event on `occurred_at`
    if accepted:
        assert parse_usage_event(raw, now=NOW).occurred_at <= NOW + timedelta(minutes=5)
    else:
        with pytest.raises(InvalidEvent) as caught:
            parse_usage_event(raw, now=NOW)
        assert caught.value.reason is Reason.FUTURE_EVENT
        assert caught.value.field == "occurred_at"


def test_future_check_follows_the_injected_now() -> None:
    """The same event is future for one `now` and fine for a later one (no wall clock)."""
    # Given an event stamped 12:10 UTC
    raw = wire(occurred_at="2026-11-24T12:10:00Z")
    # When it is parsed at 12:00 and at 12:05
    with pytest.raises(InvalidEvent) as caught:
        parse_usage_event(raw, now=NOW)
    later = parse_usage_event(raw, now=NOW + timedelta(minutes=5))
    # Then it is future at 12:00 and accepted at 12:05
    assert caught.value.reason is Reason.FUTURE_EVENT
    assert later.occurred_at == datetime(2026, 11, 24, 12, 10, tzinfo=UTC)


def test_python_construction_holds_the_same_rules() -> None:
    """Building a UsageEvent in Python refuses negative tokens and naive timestamps too."""
    # Given the fields of a valid event, as Python values
    fields: dict[str, Any] = {
        **SPEC_EXAMPLE,
        "occurred_at": datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
    }
    # When it is built with a negative count, or a naive timestamp
    # Then both are refused
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        UsageEvent(**{**fields, "input_tokens": -1})
    with pytest.raises(ValueError, match="timezone"):
        UsageEvent(**{**fields, "occurred_at": datetime(2026, 11, 24, 12, 0)})
    assert UsageEvent(**fields).input_tokens == 1200
