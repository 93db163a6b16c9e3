"""The new-month job announces the monthly blocks a new billing period lifted (R16)."""

from __future__ import annotations

import asyncio

import redis
from redis.asyncio import Redis as AsyncRedis

from metering.enforcement.keys import OrgKeys, orgs_with_stops_key
from metering.enforcement.notify import record_marks, resume_past_months
from metering.topics import TopicNames
from tests.conftest import RunningStack


def test_past_monthly_stops_resume_once_credit_stops_stay(
    stack: RunningStack, redis_prefix: tuple[redis.Redis, str]
) -> None:
    """Given an org stopped in October (user cap) and in November (org cap) and out of
    credits, when the job runs in November, then only October's stop is resumed, and a
    second run publishes nothing."""
    client, prefix = redis_prefix
    keys = OrgKeys(prefix, "org_nm")
    october = "2026-10|user_cap_reached|u:u1|5000000000"
    november = "2026-11|org_cap_reached|org|9000000000"
    credits = "-|credits_exhausted|org|1"
    client.sadd(keys.stopped, october, november, credits)
    client.sadd(orgs_with_stops_key(prefix), "org_nm")

    async def run() -> list[str]:
        async_client = AsyncRedis.from_url(stack.settings.redis_url)
        try:
            result = await resume_past_months(async_client, prefix, TopicNames(), "2026-11")
            await record_marks(async_client, prefix, result.marks)
            topics = TopicNames()
            marks = [o for o in result.outputs if o.topic == topics.notification_marks]
            # each resume removes its mark from the compacted marks topic: a tombstone
            assert [(o.key, o.value) for o in marks] == [
                (f'["org_nm","stopped","{october}"]', None)
            ] * len(marks)
            return [
                o.value.decode()
                for o in result.outputs
                if o.topic == topics.notifications and o.value is not None
            ]
        finally:
            await async_client.aclose()

    first = asyncio.run(run())
    assert len(first) == 1
    assert '"kind":"resumed"' in first[0] and '"reason":"user_cap_reached"' in first[0]
    assert '"month":"2026-10"' in first[0] and '"user_id":"u1"' in first[0]
    remaining = {m.decode() if isinstance(m, bytes) else m for m in client.smembers(keys.stopped)}
    assert remaining == {november, credits}
    assert asyncio.run(run()) == []
