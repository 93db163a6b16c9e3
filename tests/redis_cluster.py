"""A private local Redis Cluster for tests (3 primaries + 3 replicas, AOF on), started the
way `metering stack up --redis-cluster` starts one, on free ports, in a folder of its own.

    from tests.redis_cluster import ClusterHandle, redis_cluster  # noqa: F401

`redis_cluster` is a module-scoped fixture; `local_redis_cluster(var_dir)` the context
manager behind it. The handle names the nodes by port, tells who is primary, kills and
restarts nodes, and waits for the cluster to settle after a failover.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from metering.settings import Settings
from metering.stack.local import REDIS_CLUSTER, LocalStack
from metering.stack.process import wait_until
from metering.stack.redis_cluster import (
    BUS_PORT_OFFSET,
    CLUSTER_SIZE,
    LocalRedisCluster,
    NodeEntry,
    RedisClusterNode,
    settled,
)
from metering.stack.redis_server import check_redis_server, probe_client
from tests.helpers import wait_until as wait_for

# Base ports are drawn from here: below the kernel's ephemeral range (32768+) for the
# nodes and their cluster-bus ports (port + 10000), so an outgoing connection cannot be
# holding one, and far from the shared stack's 6379 and 9092.
BASE_PORTS = range(21000, 22700)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(size: int = CLUSTER_SIZE) -> int:
    """A port P with P … P+size-1 free, and their cluster-bus ports (+10000) too. Drawn at
    random, so clusters started by concurrent test runs seldom try the same ports."""
    for _ in range(500):
        base = random.choice(BASE_PORTS)
        ports = range(base, base + size)
        if all(_bindable(port) and _bindable(port + BUS_PORT_OFFSET) for port in ports):
            return base
    raise RuntimeError(f"no {size} consecutive free ports in {BASE_PORTS}")


@dataclass(frozen=True)
class ClusterHandle:
    stack: LocalStack

    # -- what it is -----------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def url(self) -> str:
        return self.settings.redis_url

    @property
    def cluster(self) -> LocalRedisCluster:
        return self.stack.redis_cluster

    @property
    def ports(self) -> list[int]:
        return self.cluster.ports

    def nodes(self) -> list[RedisClusterNode]:
        """The six, then any node a test added in the cluster's folder (a new primary):
        found by its pid file, as `metering stack down` finds them."""
        added = [
            node
            for node in LocalRedisCluster.found_nodes(self.settings.var_dir)
            if not self.cluster.holds(node.port)
        ]
        return [*self.cluster.nodes, *added]

    def node(self, port: int) -> RedisClusterNode:
        found = next((node for node in self.nodes() if node.port == port), None)
        assert found is not None, f"{port} is not a node of {self.ports}"
        return found

    def live_ports(self) -> list[int]:
        """The nodes whose process runs (not killed, or started again)."""
        return [node.port for node in self.nodes() if node.pid() is not None]

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node (no cluster routing), strings decoded."""
        return probe_client("127.0.0.1", port, decode_responses=True)

    # -- who is who ---------------------------------------------------------------
    def view(self, port: int | None = None) -> list[NodeEntry]:
        """CLUSTER NODES as `port` (default: the first live node) sees it."""
        asked = port if port is not None else self.live_ports()[0]
        entries = self.node(asked).cluster_nodes()
        assert entries, f"node {asked} does not answer"
        return entries

    def primaries(self) -> list[int]:
        """Ports of the primaries serving slots (a failed one is not counted), ascending."""
        return sorted(entry.port for entry in self.view() if entry.is_primary)

    def replicas_of(self, port: int) -> list[int]:
        """Ports of the replicas (not failed) of the node at `port`, ascending."""
        entries = self.view()
        [primary] = [entry for entry in entries if entry.port == port]
        return sorted(
            entry.port
            for entry in entries
            if entry.primary_id == primary.node_id and entry.is_replica
        )

    def node_of_key(self, key: str) -> int:
        """Port of the primary that owns `key`'s hash slot."""
        with self.client(self.live_ports()[0]) as node:
            slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = node.execute_command("CLUSTER", "SLOTS")
        for start, end, (_host, port, *_), *_replicas in ranges:
            if int(start) <= slot <= int(end):
                return int(port)
        raise AssertionError(f"slot {slot} of {key!r} is served by no node")

    # -- failures and recovery ----------------------------------------------------
    def kill(self, port: int) -> None:
        """SIGKILL the node (no shutdown: whatever its AOF had not synced is lost) and wait
        until its process is gone."""
        node = self.node(port)
        pid = node.pid()
        assert pid is not None, f"node {port} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: node.pid() is None, f"node {port} to exit", timeout_s=10)

    def start(self, port: int) -> None:
        """Start a stopped or killed node again (same command line, same folder: it reads
        its AOF and nodes.conf) and wait until it answers. It rejoins by itself; wait_ok
        waits for the cluster to agree about it."""
        node = self.node(port)
        assert node.pid() is None, f"node {port} is running"
        node.start(check_redis_server())

    def settled(self) -> bool:
        """The live nodes agree (metering.stack.redis_cluster.settled): all ok, replicas
        synced, the same primaries and replicas in every view, and every slot served by a
        live node (so a killed primary's slots have moved to its replica)."""
        return settled([node for node in self.nodes() if node.pid() is not None])

    def wait_ok(self, timeout_s: float = 30.0) -> float:
        """Wait until the cluster has settled (see `settled`); returns the seconds waited."""
        began = time.monotonic()
        wait_until(self.settled, timeout_s, f"the Redis Cluster at {self.ports}", lambda: True)
        return time.monotonic() - began


@contextlib.contextmanager
def local_redis_cluster(var_dir: Path) -> Iterator[ClusterHandle]:
    """A Redis Cluster of six nodes on free ports under `var_dir`, stopped at exit."""
    base = free_base_port()
    settings = Settings(
        var_dir=var_dir, redis_url=f"redis://127.0.0.1:{base}/0", redis_cluster=True
    )
    stack = LocalStack(settings)
    try:
        stack.up_redis()
        yield ClusterHandle(stack)
    finally:
        stack.down(frozenset({REDIS_CLUSTER}))


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A Redis Cluster for the tests of one module. A test that kills a node starts it
    again (and waits with `wait_ok`) before it ends."""
    with local_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
