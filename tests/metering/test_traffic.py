"""The sample traffic generator is deterministic and produces valid events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from metering.traffic import TrafficGenerator
from schemas.validation import parse_account_event, parse_usage_event

START = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 24, tzinfo=UTC)


def test_same_seed_same_events_and_all_valid() -> None:
    """Two generators with one seed give identical events, every one valid, in time
    order inside the requested span, covering every plan × billing mode."""
    first = TrafficGenerator(11, orgs=8, members_per_org=4, start=START)
    second = TrafficGenerator(11, orgs=8, members_per_org=4, start=START)
    usage = list(first.usage_events(2000, timedelta(days=31)))
    assert usage == list(second.usage_events(2000, timedelta(days=31)))
    assert list(first.account_events()) == list(second.account_events())
    parsed = [parse_usage_event(e, now=NOW) for e in usage]
    times = [e.occurred_at for e in parsed]
    assert times == sorted(times)
    assert times[0] >= START and times[-1] < START + timedelta(days=31)
    for event in first.account_events():
        parse_account_event(event, now=NOW)
    assert {(o.plan, o.billing_mode) for o in first.orgs} == {
        (o.plan, o.billing_mode) for o in second.orgs
    } and len({(o.plan, o.billing_mode) for o in first.orgs}) == 4
