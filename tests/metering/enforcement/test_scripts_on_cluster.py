"""The enforcement scripts on a real Redis Cluster (3 primaries + 3 replicas), driven
through the processors with redis-py's cluster clients:

- one batch of many orgs spread over every primary: the calls are grouped per node and
  every reply comes back in its place; a replay is recognised, not counted twice;
- after SCRIPT FLUSH on every node the scripts are loaded again (NOSCRIPT);
- while an org's hash slot is half moved to another primary, its script is refused on
  both nodes (`RedisUnsettled`, retried by the worker) — and, as a control, a script
  declaring the key base alone (as before `OrgKeys.script_keys`) would be redirected to
  the new node and count a replayed event again: the hazard the two keys prevent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence

import pytest
import redis
from redis.crc import key_slot

from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import SourceRecord
from metering.enforcement.usage_processor import UsageProcessor
from metering.redis_clients import RedisUnsettled, sync_client
from metering.redis_clients import async_client as async_cluster_client
from metering.topics import DEFAULT_TOPICS
from tests.e2e.scenario import new_org, spend
from tests.metering.test_enforcement_bounds import BOOK, MONTH, USD, dead, records
from tests.redis_cluster import ClusterHandle, redis_cluster  # noqa: F401

pytestmark = pytest.mark.stack

ORGS = [f"org_c{index:02d}" for index in range(12)]


@pytest.fixture
def client(redis_cluster: ClusterHandle) -> Iterator[redis.Redis]:  # noqa: F811
    with sync_client(redis_cluster.settings) as cluster_client:
        yield cluster_client


def apply_accounts(
    cluster: ClusterHandle, prefix: str, batch: Sequence[SourceRecord]
) -> BatchResult:
    async def go() -> BatchResult:
        async_client = async_cluster_client(cluster.settings)
        try:
            processor = AccountProcessor(async_client, BOOK, prefix, DEFAULT_TOPICS)
            return await processor.process(batch)
        finally:
            await async_client.aclose()

    return asyncio.run(go())


def outcomes(result: BatchResult) -> list[str]:
    """ "priced" or the dead-letter reason, per usage event of the batch, in order."""
    found = []
    for message in result.outputs:
        value = json.loads(message.value or b"")
        if message.topic == DEFAULT_TOPICS.usage_priced:
            found.append("priced")
        elif message.topic == DEFAULT_TOPICS.usage_deadletter:
            found.append(value["reason"])
    return found


def org_spend(client: redis.Redis, prefix: str, org: str) -> int:
    return int(client.hget(OrgKeys(prefix, org).spend(MONTH), "org") or 0)


@pytest.fixture
def orgs(redis_cluster: ClusterHandle) -> str:  # noqa: F811
    """The orgs, created through the account processor on the cluster; their prefix."""
    prefix = f"c{id(object()):x}:"
    events = [e for org in ORGS for e in new_org(org, members=("u1",), credits="100.00")]
    result = apply_accounts(redis_cluster, prefix, records(DEFAULT_TOPICS.account_events, *events))
    assert result.accepted == len(events), dead(result)
    return prefix


def test_a_batch_of_orgs_on_every_primary_counts_each_once(
    redis_cluster: ClusterHandle,  # noqa: F811
    client: redis.Redis,
    orgs: str,
) -> None:
    prefix = orgs
    homes = {redis_cluster.node_of_key(OrgKeys(prefix, org).base) for org in ORGS}
    assert len(homes) >= 2, "the orgs should spread over several primaries"
    batch = records(DEFAULT_TOPICS.usage_events, *(spend(org, "u1", 2) for org in ORGS))
    processor = UsageProcessor(client, BOOK, prefix, DEFAULT_TOPICS)

    assert outcomes(processor.process(batch)) == ["priced"] * len(ORGS)
    assert [org_spend(client, prefix, org) for org in ORGS] == [2 * USD] * len(ORGS)

    # The same records again (a replay after a crash): priced again, counted once
    assert outcomes(processor.process(batch)) == ["priced"] * len(ORGS)
    assert [org_spend(client, prefix, org) for org in ORGS] == [2 * USD] * len(ORGS)

    # Scripts flushed on every node (a node restarted without them): loaded again
    for port in redis_cluster.primaries():
        with redis_cluster.client(port) as node:
            node.script_flush()
    more = records(DEFAULT_TOPICS.usage_events, *(spend(org, "u1", 1) for org in ORGS))
    assert outcomes(processor.process(more)) == ["priced"] * len(ORGS)
    assert [org_spend(client, prefix, org) for org in ORGS] == [3 * USD] * len(ORGS)


def _node_id(cluster: ClusterHandle, port: int) -> str:
    with cluster.client(port) as node:
        return str(node.execute_command("CLUSTER", "MYID"))


def test_a_half_moved_org_is_refused_until_its_slot_has_moved(
    redis_cluster: ClusterHandle,  # noqa: F811
    client: redis.Redis,
    orgs: str,
) -> None:
    prefix, org = orgs, ORGS[0]
    keys = OrgKeys(prefix, org)
    processor = UsageProcessor(client, BOOK, prefix, DEFAULT_TOPICS)
    batch = records(DEFAULT_TOPICS.usage_events, spend(org, "u1", 4))
    assert outcomes(processor.process(batch)) == ["priced"]

    # Given the org's slot half moved: every key on the new primary but its marks
    slot = key_slot(keys.base.encode())
    source = redis_cluster.node_of_key(keys.base)
    target = next(port for port in redis_cluster.primaries() if port != source)
    source_id, target_id = _node_id(redis_cluster, source), _node_id(redis_cluster, target)
    with redis_cluster.client(source) as old, redis_cluster.client(target) as new:
        new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        held = old.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        marks = keys.usage_ids(MONTH)
        assert marks in held and keys.meta in held
        moving = [key for key in held if key != marks]
        old.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *moving)

        # When the same event is replayed: refused on both nodes, nothing counted
        with pytest.raises(RedisUnsettled):
            processor.process(batch)

        # (Control: declaring only the key base, the script is sent on to the new node,
        # which lacks the marks, and counts the replay again.)
        [(script_keys, args)] = processor.prepare(batch).calls
        reply = client.evalsha(processor._script.sha, 1, script_keys[0], *args)
        assert json.loads(reply)["outcomes"][0].startswith("A|"), "the hazard is real"

        # Then once the slot has moved, the org is served again (REPLACE: the control
        # wrote marks of its own on the new node)
        old.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", marks)
        for port in redis_cluster.primaries():
            with redis_cluster.client(port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    assert outcomes(processor.process(batch)) == ["priced"]
    assert redis_cluster.node_of_key(keys.base) == target
