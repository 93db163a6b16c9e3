"""`metering stack up --redis-cluster`: six local nodes (3 primaries + 3 replicas, AOF on)
on free ports in a folder of their own, so the session's stack is never disturbed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from metering.settings import Settings
from metering.stack.local import REDIS_CLUSTER, LocalStack, State
from metering.stack.process import StackError, free_port
from metering.stack.redis_cluster import CLUSTER_SIZE
from tests.helpers import run_metering
from tests.redis_cluster import (
    ClusterHandle,
    free_base_port,
    local_redis_cluster,
    redis_cluster,  # noqa: F401  (the fixture)
)

# A failover takes the node timeout (2 s) to suspect the primary, a moment for the others
# to agree, then the replica's election delay (0.5–1 s); 15 s is ample.
FAILOVER_BOUND_S = 15.0


def _node_ids(cluster: ClusterHandle) -> dict[int, str]:
    ids = {}
    for port in cluster.ports:
        with cluster.client(port) as node:
            ids[port] = str(node.execute_command("CLUSTER", "MYID"))
    return ids


def _pids(cluster: ClusterHandle) -> list[int | None]:
    return [node.pid() for node in cluster.cluster.nodes]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (a node this process started and nobody reaped yet) is gone as well.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.stack
def test_three_primaries_with_a_replica_each_aof_on_and_keys_routed(
    redis_cluster: ClusterHandle,  # noqa: F811
) -> None:
    """The cluster has three primaries holding every slot, one replica each, AOF synced
    every second on every node, and a cluster client reads back what it wrote."""
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    replicas = {port: redis_cluster.replicas_of(port) for port in primaries}
    assert all(len(of) == 1 for of in replicas.values()), replicas
    assert sorted([*primaries, *(r for of in replicas.values() for r in of)]) == (
        redis_cluster.ports
    )
    for port in redis_cluster.ports:
        with redis_cluster.client(port) as node:
            assert node.config_get("appendonly") == {"appendonly": "yes"}
            assert node.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert node.config_get("hash-max-listpack-entries") == {
                "hash-max-listpack-entries": "128"
            }

    keys = [f"test:{{org-{n}}}:spend" for n in range(30)]
    with redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True) as client:
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == keys
        client.delete(*keys)
    # The keys landed on every primary, each on the one its slot names.
    assert {redis_cluster.node_of_key(key) for key in keys} == set(primaries)


@pytest.mark.stack
def test_a_killed_primary_fails_over_to_its_replica_and_rejoins_as_a_replica(
    redis_cluster: ClusterHandle,  # noqa: F811
) -> None:
    """SIGKILL a primary: within seconds its replica serves the slots (the key written
    before is there), and the killed node, started again, comes back as a replica."""
    key = "test:{failover}:balance"
    victim = redis_cluster.node_of_key(key)
    [replica] = redis_cluster.replicas_of(victim)
    with redis_cluster.client(victim) as primary:
        primary.set(key, "42")
        # Replication is asynchronous: make sure the replica has it before the crash.
        assert primary.execute_command("WAIT", 1, 5000) == 1

    redis_cluster.kill(victim)
    waited = redis_cluster.wait_ok(timeout_s=FAILOVER_BOUND_S)
    print(f"failover took {waited:.1f} s")
    assert victim not in redis_cluster.primaries()
    assert replica in redis_cluster.primaries()
    assert redis_cluster.node_of_key(key) == replica
    # A new client asks the node it is given for the slot map: not the victim, which may
    # be the one METERING_REDIS_URL names.
    with redis.RedisCluster("127.0.0.1", replica, decode_responses=True) as client:
        assert client.get(key) == "42"

    began = time.monotonic()
    redis_cluster.start(victim)
    redis_cluster.wait_ok(timeout_s=30)
    print(f"rejoined in {time.monotonic() - began:.1f} s")
    assert redis_cluster.replicas_of(replica) == [victim]
    assert len(redis_cluster.primaries()) == 3
    with redis_cluster.client(victim) as rejoined:
        assert rejoined.execute_command("ROLE")[0] == "slave"
        rejoined.execute_command("READONLY")  # reads from a replica
        assert rejoined.get(key) == "42"


@pytest.mark.stack
def test_up_twice_is_a_no_op_down_stops_every_node_and_up_restarts_without_create(
    tmp_path: Path,
) -> None:
    """A second `up` finds the six nodes running (same processes, same node ids, no new
    cluster); `down`, even without METERING_REDIS_CLUSTER, stops all six; a later `up`
    starts them from their nodes.conf and AOF: the same cluster, the data kept."""
    var = tmp_path / "var"
    with local_redis_cluster(var) as cluster:
        ids = _node_ids(cluster)
        pids = _pids(cluster)
        assert all(pids)

        # When `up` runs again, nothing changes
        again = cluster.stack.up_redis()
        assert [row.name for row in again] == [REDIS_CLUSTER] * CLUSTER_SIZE
        assert [row.state for row in again] == [State.RUNNING] * CLUSTER_SIZE
        assert [row.pid for row in again] == pids
        assert not any("cluster created" in row.detail for row in again)
        assert _node_ids(cluster) == ids
        with redis.RedisCluster.from_url(cluster.url) as client:
            client.set("test:{keep}:account", "kept")

        # `status` without the setting finds the nodes by their pid files
        unset = LocalStack(
            Settings(
                var_dir=var,
                redis_url=f"redis://127.0.0.1:{free_port()}/0",
                kafka_bootstrap=f"127.0.0.1:{free_port()}",
            )
        )
        rows = [row for row in unset.status() if row.name == REDIS_CLUSTER]
        assert [row.endpoint for row in rows] == [f"127.0.0.1:{p}" for p in cluster.ports]
        assert all(row.state is State.RUNNING for row in rows)
        assert sum(row.detail.startswith("primary") for row in rows) == 3
        assert sum(row.detail.startswith("replica of") for row in rows) == 3

        # And `down` without it stops every node
        stopped = unset.down(frozenset({"redis", REDIS_CLUSTER}))
        assert [(r.name, r.state) for r in stopped] == [("redis", State.DOWN)] + [
            (REDIS_CLUSTER, State.STOPPED)
        ] * CLUSTER_SIZE
        assert all(_gone(pid) for pid in pids if pid)
        assert all(node.pid() is None for node in cluster.cluster.nodes)
        status = [row for row in cluster.stack.status() if row.name == REDIS_CLUSTER]
        assert [row.state for row in status] == [State.DOWN] * CLUSTER_SIZE

        # Started again: the same cluster from nodes.conf (no create), its data from AOF
        restarted = cluster.stack.up_redis()
        assert [row.state for row in restarted] == [State.STARTED] * CLUSTER_SIZE
        assert not any("cluster created" in row.detail for row in restarted)
        assert _node_ids(cluster) == ids
        with redis.RedisCluster.from_url(cluster.url) as client:
            assert client.get("test:{keep}:account") == b"kept"
        pids = _pids(cluster)
    assert all(_gone(pid) for pid in pids if pid)


@pytest.mark.stack
def test_the_single_redis_and_the_cluster_refuse_to_share_ports(tmp_path: Path) -> None:
    """The single Redis this stack started, on a port of the cluster's range, keeps the
    cluster from starting, and a running cluster node keeps the single Redis from
    starting at its port (rather than being used as if it were one)."""
    base = free_base_port()
    var = tmp_path / "var"
    single = LocalStack(Settings(var_dir=var, redis_url=f"redis://127.0.0.1:{base + 2}/0"))
    cluster = LocalStack(
        Settings(var_dir=var, redis_url=f"redis://127.0.0.1:{base}/0", redis_cluster=True)
    )
    try:
        [started] = single.up_redis()
        assert started.state is State.STARTED
        with pytest.raises(StackError, match=f"single Redis this stack started .*port {base + 2}"):
            cluster.up_redis()
        single.down(frozenset({"redis"}))

        assert {row.state for row in cluster.up_redis()} == {State.STARTED}
        with pytest.raises(StackError, match=f"port {base + 2} is a node of the Redis Cluster"):
            single.up_redis()
    finally:
        cluster.down(frozenset({"redis", REDIS_CLUSTER}))


def test_a_cluster_url_must_select_database_0() -> None:
    """Redis Cluster has only database 0: a URL selecting another is refused up front, in
    the settings and as one line from the CLI."""
    assert Settings(redis_url="redis://127.0.0.1:7000", redis_cluster=True).redis_cluster
    assert Settings(redis_url="redis://127.0.0.1:7000/2").redis_url.endswith("/2")
    for url in ("redis://127.0.0.1:7000/2", "redis://127.0.0.1:7000/0?db=1"):
        with pytest.raises(ValidationError, match="has only database 0"):
            Settings(redis_url=url, redis_cluster=True)
    result = run_metering(
        "stack", "up", "--redis-cluster", METERING_REDIS_URL="redis://127.0.0.1:7000/3"
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: METERING_REDIS_URL")
    assert "selects database 3" in lines[0]


def test_the_flag_is_documented_in_the_help() -> None:
    result = run_metering("stack", "up", "--help")
    assert result.returncode == 0
    assert "--redis-cluster" in result.stdout
