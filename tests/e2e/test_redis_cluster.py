"""The enforcement path on a real Redis Cluster (3 primaries + 3 replicas, AOF on):
`METERING_REDIS_CLUSTER=true` for the worker, the gate and the tests' own reads.

- The enforcement end-to-end tests and the SIGKILL crash test run again here, unchanged:
  they are imported below, so pytest collects them in this module, where the `pipeline`
  fixture is the cluster's.
- Resharding: the hash slots of most orgs move to another primary, key by key (CLUSTER
  SETSLOT … IMPORTING/MIGRATING, MIGRATE, SETSLOT … NODE), while 50,000 events flow.
  While a slot is half moved, the org's scripts must not run on either node (they would
  see half of its keys: OrgKeys.script_keys); the worker retries until the slot is home.
- Failover: the primary holding most orgs is SIGKILLed while events flow; its replica
  takes over, the worker retries meanwhile; the old primary comes back as a replica.

Pass, each time: Redis counters equal the reference model, accepted + dead-lettered +
duplicates = produced, every threshold reached was notified, and the gate's answer for
every member is the reference's (billing.enforcement.decide on the reference's numbers).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from billing.enforcement import GateState, decide
from metering.stack.redis_cluster import RedisClusterNode
from metering.stack.redis_server import check_redis_server
from schemas.account import BillingMode, Plan, SeatType
from schemas.usage import Surface
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.reference import ALLOWANCE, Reference

# Collected again here, on this module's `pipeline` fixture (the cluster's).
from tests.e2e.test_crash_safety import (  # noqa: F401
    SEED,
    assert_outputs_match,
    assert_thresholds_notified,
    build_workload,
    expected_state,
    redis_state,
    test_sigkill_at_random_points_changes_nothing,
    workload_time,
)
from tests.e2e.test_enforcement import (  # noqa: F401
    test_credits_exhausted_then_a_purchase_resumes,
    test_duplicates_count_once_and_conflicts_are_dead_lettered,
    test_org_cap_and_the_lower_of_two_caps,
    test_surface_and_seat_allowance,
    test_usage_before_its_org_is_dead_lettered_and_redriven,
    test_user_cap_blocks_then_raising_it_resumes,
)
from tests.redis_cluster import ClusterHandle, free_base_port, redis_cluster  # noqa: F401

pytestmark = pytest.mark.stack

SURFACE = Surface("chat_web")


@pytest.fixture
def pipeline(
    stack: RunningStack,
    redis_cluster: ClusterHandle,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> Iterator[Pipeline]:
    base = stack.settings.model_copy(update={"redis_url": redis_cluster.url, "redis_cluster": True})
    created = new_pipeline(base, tmp_path)
    yield created
    cleanup(created)


# -- the workload, the flow and the checks ------------------------------------------
def _expected_gate(reference: Reference, org_id: str, user: str, month: str) -> str | None:
    """The gate's answer for a member, from the reference's numbers."""
    org = reference.orgs[org_id]
    spend = reference.spend[(org_id, month)]
    seat = org.seats[user]
    state = GateState(
        plan=Plan(org.plan),
        billing_mode=BillingMode(org.mode),
        extra_usage=False,
        seat=SeatType(seat),
        org_spend_nano_usd=spend["org"],
        org_cap_nano_usd=reference.caps.get((org_id, None)),
        user_spend_nano_usd=spend[f"u:{user}"],
        user_cap_nano_usd=reference.caps.get((org_id, user)),
        credit_balance_nano_usd=org.balance,
        allowance_used_nano_usd=spend[f"a:{user}"],
        allowance_nano_usd=ALLOWANCE[seat] if org.plan == "seat_based" else 0,
    )
    reason = decide(state, SURFACE).reason
    return reason.value if reason else None


def _flow_while(
    pipeline: Pipeline, usage: list[dict[str, Any]], disturb: Callable[[], None], seed: int
) -> None:
    """Send `usage` paced over ~15 s; `disturb` runs a few seconds in, meanwhile."""

    def flow() -> None:
        with pipeline.emitter() as emit:
            for start in range(0, len(usage), 500):
                for event in usage[start : start + 500]:
                    emit.emit_usage(event)
                time.sleep(0.15)

    sender = threading.Thread(target=flow)
    sender.start()
    try:
        time.sleep(random.Random(seed).uniform(2.0, 4.0))
        disturb()
    finally:
        sender.join()


def _check_against_reference(
    pipeline: Pipeline, reference: Reference, usage: list[dict[str, Any]], month: str
) -> None:
    pipeline.wait_caught_up()
    retried = pipeline.log_path.read_text(errors="replace").count("failed in Redis")
    print(f"usage batches the worker retried in Redis: {retried}")
    assert redis_state(pipeline, reference, month) == expected_state(reference, month), SEED
    assert_outputs_match(pipeline, reference, usage)
    assert_thresholds_notified(pipeline, reference, month)
    answers = {
        (org, user): pipeline.gate(org, user)
        for org, ref in reference.orgs.items()
        for user in ref.seats
    }
    expected = {
        (org, user): _expected_gate(reference, org, user, month)
        for org, ref in reference.orgs.items()
        for user in ref.seats
    }
    assert answers == expected, SEED


def _start(pipeline: Pipeline, seed: int) -> tuple[list[dict[str, Any]], Reference, str]:
    """A worker, the workload's orgs in place; the usage still to send."""
    now = workload_time()
    accounts, usage, reference = build_workload(random.Random(seed), now)
    pipeline.start_worker()
    with pipeline.emitter() as emit:
        for event in accounts:
            emit.emit_account(event)
    for org in reference.orgs:
        pipeline.wait_for_gate(org, "stranger", "unknown_member", timeout_s=90)
    return usage, reference, now.strftime("%Y-%m")


def _org_slots(pipeline: Pipeline, cluster: ClusterHandle, orgs: list[str]) -> dict[int, int]:
    """Hash slot → its primary's port, for the orgs' slots."""
    prefix = pipeline.settings.redis_prefix
    return {
        key_slot(f"{prefix}{{{org}}}".encode()): cluster.node_of_key(f"{prefix}{{{org}}}")
        for org in orgs
    }


# -- resharding -------------------------------------------------------------------
def _node_id(port: int) -> str:
    with redis.Redis(port=port) as node:
        return str(node.execute_command("CLUSTER", "MYID"), "ascii")


def move_slot(cluster: ClusterHandle, slot: int, source: int, target: int, pause_s: float) -> int:
    """Move one hash slot from the primary at `source` to the one at `target`, one key
    per MIGRATE with a pause between (a long half-moved window). Returns keys moved."""
    source_id, target_id = _node_id(source), _node_id(target)
    moved = 0
    with redis.Redis(port=source) as old, redis.Redis(port=target) as new:
        new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := old.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
            old.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        new.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        old.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    for port in cluster.primaries():  # the others learn it now rather than by gossip
        if port not in (source, target):
            with redis.Redis(port=port) as other:
                other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return moved


def test_resharding_while_events_flow_changes_nothing(
    pipeline: Pipeline,
    redis_cluster: ClusterHandle,  # noqa: F811
) -> None:
    """While 50,000 events flow, the slots of the orgs move to other primaries, key by
    key: the counters, outputs, notifications and gate answers equal the reference."""
    print(f"seed {SEED}")
    usage, reference, month = _start(pipeline, SEED + 3)
    slots = _org_slots(pipeline, redis_cluster, list(reference.orgs))
    primaries = redis_cluster.primaries()
    report: list[tuple[int, int, int, int]] = []

    def reshard() -> None:
        for slot, source in sorted(slots.items()):
            target = primaries[(primaries.index(source) + 1) % len(primaries)]
            report.append(
                (slot, source, target, move_slot(redis_cluster, slot, source, target, 0.02))
            )

    _flow_while(pipeline, usage, reshard, SEED)
    print("moved (slot, from, to, keys):", report)
    # The slots did move, with keys in them, while the flow went on
    assert report and all(keys > 0 for *_, keys in report)
    moved_now = _org_slots(pipeline, redis_cluster, list(reference.orgs))
    assert all(moved_now[slot] == target for slot, _, target, _ in report)
    _check_against_reference(pipeline, reference, usage, month)


# -- failover ---------------------------------------------------------------------
def test_a_primary_killed_while_events_flow_fails_over_without_loss(
    pipeline: Pipeline,
    redis_cluster: ClusterHandle,  # noqa: F811
) -> None:
    """While 50,000 events flow, the primary holding most orgs is SIGKILLed; its replica
    takes over (the worker retries meanwhile), the old primary returns as a replica. The
    counters, outputs, notifications and gate answers equal the reference."""
    print(f"seed {SEED}")
    usage, reference, month = _start(pipeline, SEED + 4)
    owners = list(_org_slots(pipeline, redis_cluster, list(reference.orgs)).values())
    victim = max(set(owners), key=owners.count)
    replicas = redis_cluster.replicas_of(victim)
    assert replicas, "every primary has a replica"

    def fail_over() -> None:
        redis_cluster.kill(victim)  # SIGKILL
        redis_cluster.wait_ok(timeout_s=30)  # the replica was promoted

    try:
        _flow_while(pipeline, usage, fail_over, SEED)
        assert victim not in redis_cluster.primaries()
        assert any(r in redis_cluster.primaries() for r in replicas)
        pipeline.wait_caught_up()  # with the victim still down
    finally:
        # Back, as a replica of its successor. (Before the checks: they open new
        # clients, and a new client reads the slot map from the URL's node, which may
        # be the victim: docs/operations.md.)
        redis_cluster.start(victim)
        redis_cluster.wait_ok(timeout_s=30)
    assert victim not in redis_cluster.primaries()
    _check_against_reference(pipeline, reference, usage, month)


# -- the runbook: adding a primary (docs/operations.md › Adding a Redis primary) ------
def _cli(*args: object) -> str:
    done = subprocess.run(
        ["redis-cli", "--cluster", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_adding_a_primary_while_events_flow_follows_the_runbook(
    pipeline: Pipeline,
    redis_cluster: ClusterHandle,  # noqa: F811
) -> None:
    """The runbook's steps while 50,000 events flow: a new empty node joins as a primary,
    `rebalance --cluster-use-empty-masters` moves a share of every primary's slots to it
    (the slots of some of the orgs among them), and it gets a replica. The counters,
    outputs, notifications and gate answers equal the reference."""
    print(f"seed {SEED}")
    usage, reference, month = _start(pipeline, SEED + 5)
    entry = f"127.0.0.1:{redis_cluster.primaries()[0]}"
    base = free_base_port(2)
    new, replica = (
        RedisClusterNode(port, redis_cluster.cluster.home / f"node-{port}")
        for port in (base, base + 1)
    )
    before = _org_slots(pipeline, redis_cluster, list(reference.orgs))

    def add_primary() -> None:
        new.start(check_redis_server())  # 1. a new node, configured like the others
        _cli("add-node", f"127.0.0.1:{new.port}", entry)  # 2. joins as an empty primary
        redis_cluster.wait_ok()
        _cli("rebalance", entry, "--cluster-use-empty-masters")  # 3. slots move to it
        replica.start(check_redis_server())  # 4. its replica
        new_id = _node_id(new.port)
        _cli(
            "add-node",
            f"127.0.0.1:{replica.port}",
            entry,
            "--cluster-slave",
            "--cluster-master-id",
            new_id,
        )

    _flow_while(pipeline, usage, add_primary, SEED)
    redis_cluster.wait_ok(timeout_s=60)
    assert "[OK] All 16384 slots covered." in _cli("check", entry)  # 5. check
    after = _org_slots(pipeline, redis_cluster, list(reference.orgs))
    moved = [slot for slot, port in after.items() if port == new.port]
    print(f"org slots moved to the new primary: {moved} (of {sorted(before)})")
    assert moved, "some org's slot should have moved to the new primary"
    assert redis_cluster.replicas_of(new.port) == [replica.port]
    _check_against_reference(pipeline, reference, usage, month)
