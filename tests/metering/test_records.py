"""The hot path's hand-assembled output equals the contract model's serialisation."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given
from hypothesis import strategies as st

from metering.enforcement.records import digest, digest_bytes, priced_json
from schemas.outputs import PricedUsage
from schemas.usage import Surface, UsageEvent
from schemas.validation import encode_event

events = st.builds(
    UsageEvent,
    event_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,40}", fullmatch=True),
    org_id=st.sampled_from(["org_a", "org.b:1"]),
    user_id=st.sampled_from(["u", "a@b.c"]),
    surface=st.sampled_from(Surface),
    model=st.sampled_from(["claude-sonnet-4-5", "m"]),
    input_tokens=st.integers(0, 10_000_000),
    output_tokens=st.integers(0, 10_000_000),
    cache_creation_input_tokens=st.integers(0, 10_000_000),
    cache_read_input_tokens=st.integers(0, 10_000_000),
    occurred_at=st.datetimes(
        # the contract's range of dates (schemas.common: 2000-01-01 – 2099-12-31)
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2099, 12, 31, 23, 59, 59),
        timezones=st.just(UTC),
    ),
)


@given(
    events,
    st.integers(0, 10**13),
    st.integers(0, 10**12),
    st.dates(),
    st.integers(0, 999),
    st.integers(0, 10**12),
)
def test_priced_json_is_the_model_serialisation(
    event: UsageEvent, cost: int, included: int, version: date, partition: int, offset: int
) -> None:
    """For any event and amounts, the fast path's bytes equal PricedUsage's JSON."""
    fast = priced_json(
        encode_event(event),
        cost_nano_usd=cost,
        included_nano_usd=included,
        price_version=version,
        partition=partition,
        offset=offset,
    )
    model = PricedUsage(
        event=event,
        cost_nano_usd=cost,
        included_nano_usd=included,
        billed_nano_usd=cost - included,
        price_version=version,
        source_partition=partition,
        source_offset=offset,
    )
    assert fast == model.model_dump_json().encode()
    assert digest(event) == digest_bytes(encode_event(event))
