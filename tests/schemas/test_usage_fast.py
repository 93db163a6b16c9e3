"""The usage event's fast path agrees with the pydantic parser: whatever it accepts,
pydantic accepts as the same event with the same canonical bytes; whatever it is unsure
of, it leaves to pydantic (None), which decides the reason code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.usage import UsageEvent
from schemas.usage_fast import canonical_usage_json, parse_usage_fast
from schemas.validation import InvalidEvent, encode_event, parse_usage_event

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

_ids = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,20}\Z"),
    st.sampled_from(["", "a\n", "a b", "{org}", "x" * 128, "x" * 129, "é", "-a"]),
    st.integers(0, 10),
)
_tokens = st.one_of(
    st.integers(0, 10_000_000),
    st.sampled_from([-1, 10_000_001, 2**70, True, 1.0, "5", None]),
)
_timestamps = st.one_of(
    st.datetimes(
        min_value=datetime(1999, 12, 31), max_value=datetime(2026, 12, 8), timezones=st.just(UTC)
    ).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2026-12-07T11:00:00Z",
            "2026-12-07T11:00:00.1234567Z",
            "2026-12-07T11:00:00",
            "2026-12-07t11:00:00z",
            "2026-12-07 11:00:00Z",
            "2026-12-07T11:00:00+05:30",
            "2026-12-07T11:00:00-00:00",
            "2026-02-30T11:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T11:00:60Z",
            "2026-12-07T12:06:00Z",
            "2026-12-07T12:04:59.999999Z",
            "1999-12-31T23:59:59+00:00",
            "2000-01-01T00:30:00+01:00",
            "2026-12-07T11:00:00+25:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:30:00-01:00",
            "1733572800",
        ]
    ),
    st.integers(0, 2_000_000_000),
)
_surfaces = st.sampled_from(["chat_web", "claude_code", "cowork", "CHAT_WEB", "nope", 3])


@st.composite
def _events(draw: Any) -> bytes:
    event: dict[str, Any] = {
        "event_id": draw(_ids),
        "org_id": draw(_ids),
        "user_id": draw(_ids),
        "surface": draw(_surfaces),
        "model": draw(st.one_of(st.just("claude-sonnet-4-5"), _ids)),
        "input_tokens": draw(_tokens),
        "output_tokens": draw(_tokens),
        "occurred_at": draw(_timestamps),
    }
    for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        if draw(st.booleans()):
            event[name] = draw(_tokens)
    if draw(st.integers(0, 9)) == 0:
        event["extra"] = 1
    if draw(st.integers(0, 9)) == 0:
        del event[draw(st.sampled_from(sorted(event)))]
    raw = json.dumps(event)
    if draw(st.integers(0, 14)) == 0:  # a repeated key: the last one counts
        raw = raw[:-1] + ', "input_tokens": 7}'
    return raw.encode()


def _pydantic(raw: bytes) -> Any:
    try:
        return parse_usage_event(raw, now=NOW)
    except InvalidEvent:
        return None


@settings(max_examples=3000, deadline=None)
@given(_events())
def test_what_the_fast_path_accepts_pydantic_accepts_as_the_same_event(raw: bytes) -> None:
    fast = parse_usage_fast(raw, now=NOW)
    reference = _pydantic(raw)
    if fast is not None:
        assert reference is not None, raw
        fields = {name: getattr(reference, name) for name in UsageEvent.model_fields}
        assert msgspec.structs.asdict(fast) == {**fields, "canonical": fast.canonical}, raw
        assert canonical_usage_json(fast) == encode_event(reference), raw


def test_the_common_wire_form_takes_the_fast_path() -> None:
    raw = (
        b'{"event_id":"e1","org_id":"o1","user_id":"u1","surface":"chat_web",'
        b'"model":"claude-sonnet-4-5","input_tokens":10,"output_tokens":5,'
        b'"occurred_at":"2026-12-07T11:00:00.5+01:00"}'
    )
    fast = parse_usage_fast(raw, now=NOW)
    assert fast is not None
    assert fast.occurred_at == datetime(2026, 12, 7, 10, 0, 0, 500000, tzinfo=UTC)
    assert canonical_usage_json(fast).endswith(b'"occurred_at":"2026-12-07T10:00:00.500000Z"}')


def test_doubtful_events_are_left_to_pydantic() -> None:
    base = {
        "event_id": "e1",
        "org_id": "o1",
        "user_id": "u1",
        "surface": "chat_web",
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 1,
        "occurred_at": "2026-12-07T11:00:00Z",
    }
    for change in (
        {"event_id": "e1\n"},
        {"input_tokens": True},
        {"input_tokens": -1},
        {"occurred_at": "2026-12-07T11:00:00"},
        {"occurred_at": "2026-12-07T12:06:00Z"},  # more than 5 minutes ahead
        {"occurred_at": "1999-12-31T23:59:59Z"},
        {"surface": "fax"},
        {"extra": 1},
    ):
        assert parse_usage_fast(json.dumps({**base, **change}).encode(), now=NOW) is None, change
    assert parse_usage_fast(b"x" * 20_000, now=NOW) is None
