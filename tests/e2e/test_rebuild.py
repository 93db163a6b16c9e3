"""G3: the Redis projection is rebuilt from Kafka to exactly the state it had."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import account, spend
from tests.e2e.test_crash_safety import build_workload, workload_time
from tests.helpers import run_metering

pytestmark = pytest.mark.stack


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of the namespace with its full content."""
    state: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key)
        if kind == "hash":
            state[key] = client.hgetall(key)
        elif kind == "set":
            state[key] = sorted(client.smembers(key))
        elif kind == "zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = client.get(key)
    return state


def test_delete_everything_then_rebuild_gives_identical_state(pipeline: Pipeline) -> None:
    """After traffic with caps, notifications, stops, duplicates and dead letters, every
    key is deleted; `metering rebuild` restores each key with identical content, and a
    second rebuild changes nothing."""
    # Given a pipeline that processed a varied workload, caps and a stop included
    accounts, usage, _reference = build_workload(random.Random(7), workload_time())
    accounts.append(
        account("org_k00", "spend_cap.set", {"user_id": "u00_1", "limit": "1.00"}, actor=None)
    )
    pipeline.start_worker()
    with pipeline.emitter() as emit:
        for event in accounts:
            emit.emit_account(event)
    pipeline.wait_for_gate("org_k00", "u00_1", None)
    with pipeline.emitter() as emit:
        for event in usage[:5000]:
            emit.emit_usage(event)
        emit.emit_usage(spend("org_k00", "u00_1", 2))
    pipeline.wait_for_gate("org_k00", "u00_1", "user_cap_reached")
    pipeline.wait_caught_up()
    pipeline.stop_worker()
    client = redis.Redis.from_url(pipeline.settings.redis_url, decode_responses=True)
    before = snapshot(client, pipeline.settings.redis_prefix)
    assert any(key.endswith(":stopped") for key in before)

    # When the projection is deleted and rebuilt from Kafka
    result = run_metering("rebuild", "--flush", **pipeline.env())
    assert result.returncode == 0, result.stdout + result.stderr
    after = snapshot(client, pipeline.settings.redis_prefix)

    # Then every key is back with identical content, and a second rebuild is a no-op
    assert after.keys() == before.keys()
    assert after == before
    again = run_metering("rebuild", **pipeline.env())
    assert again.returncode == 0, again.stderr
    assert snapshot(client, pipeline.settings.redis_prefix) == before
    client.close()
