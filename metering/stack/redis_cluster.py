"""A local Redis Cluster: six redis-server nodes (3 primaries + 3 replicas, AOF on) at
METERING_REDIS_URL's port and the five above (README › The local stack).

Each node keeps its data, log, pid file and `nodes.conf` (the cluster's membership, written
by Redis itself) in `var/redis-cluster/node-<port>/`. The first start forms the cluster
with `redis-cli --cluster create`; later starts find `nodes.conf` and only wait for the
nodes to agree again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from metering.stack.endpoints import Endpoint
from metering.stack.process import StackError, read_pid, spawn, terminate, wait_until
from metering.stack.redis_server import MAIN_MARKER, probe_client, redis_flags

CLUSTER_SIZE = 6  # three primaries, each with one replica
REPLICAS_PER_PRIMARY = 1
HASH_SLOTS = 16384
# A node also listens on its port + 10000 (the cluster bus): that port must be free too.
BUS_PORT_OFFSET = 10000
# How long a node may not answer before the others count it as failed and its replica
# takes over. Redis's default is 15 s; 2 s makes a failover (in tests, or after a crash
# on a developer's machine) take a few seconds instead of ~20. A loaded machine that stalls
# a node for 2 s may see a needless failover: harmless, the old primary returns as a
# replica.
NODE_TIMEOUT_MS = 2000
NODE_START_TIMEOUT_S = 20.0
CLUSTER_OK_TIMEOUT_S = 30.0
CREATE_TIMEOUT_S = 60.0
FOLDER = "redis-cluster"


def check_redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise StackError(
            "redis-cli not found (it forms the Redis Cluster): apt-get install redis-tools"
        )
    return binary


def _client(port: int) -> redis.Redis:
    return probe_client("127.0.0.1", port, decode_responses=True)


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES: a node as another node (or itself) sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None  # a replica's primary
    slots: int  # how many hash slots it serves

    @property
    def failed(self) -> bool:
        # "fail" is agreed by a majority of primaries; "fail?" is one node's suspicion,
        # and a primary only suspected still owns its slots.
        return "fail" in self.flags

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags and not self.failed and self.slots > 0

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags and not self.failed

    @classmethod
    def parse(cls, line: str) -> NodeEntry:
        # <id> <ip:port@bus-port> <flags> <primary id|-> <ping> <pong> <epoch> <link> <slots…>
        fields = line.split()
        node_id, address, flags, primary = fields[:4]
        slots = 0
        for piece in fields[8:]:
            if piece.startswith("["):  # a slot being imported or migrated: listed, not served
                continue
            start, _, end = piece.partition("-")
            slots += int(end or start) - int(start) + 1
        return cls(
            node_id=node_id,
            port=int(address.split("@", 1)[0].rsplit(":", 1)[1]),
            flags=frozenset(flags.split(",")),
            primary_id=None if primary == "-" else primary,
            slots=slots,
        )


def layout(entries: Iterable[NodeEntry]) -> frozenset[tuple[int, int | None, int]]:
    """A view reduced to what every node must agree on: (port, its primary's port or None
    for a primary, slots served) of each node not failed."""
    alive = [entry for entry in entries if not entry.failed]
    port_of = {entry.node_id: entry.port for entry in alive}
    return frozenset(
        (entry.port, port_of.get(entry.primary_id or ""), entry.slots) for entry in alive
    )


def settled(nodes: Sequence[RedisClusterNode]) -> bool:
    """`nodes` (the running ones of a cluster) agree: each reports cluster_state:ok with
    every slot assigned, each replica has synced with its primary, each sees the same
    primaries and replicas, and every primary serving slots is one of `nodes`. Right after
    `redis-cli --cluster create`, or a failover, each node knows its own role before the
    others do."""
    if not nodes or not all(node.is_ok() and node.is_synced() for node in nodes):
        return False
    views = [layout(node.cluster_nodes()) for node in nodes]
    serving = {port for port, primary, slots in views[0] if primary is None and slots}
    return (
        all(view == views[0] for view in views)
        and sum(slots for *_, slots in views[0]) == HASH_SLOTS
        and serving <= {node.port for node in nodes}
    )


@dataclass(frozen=True)
class RedisClusterNode:
    """One node: its port, folder and files, and what it says about the cluster."""

    port: int
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "redis.log"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            *redis_flags(self.port, self.home),
            "--cluster-enabled",
            "yes",
            # Relative to --dir, so each node has its own.
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            # A primary waits 5 s (by default) for more replicas to share a full sync; with
            # one replica each, that only delays the first sync and every re-sync after a
            # failover, and a replica that has never synced cannot take over.
            "--repl-diskless-sync-delay",
            "0",
        ]

    def pid(self) -> int | None:
        return read_pid(self.pid_file, MAIN_MARKER)

    def start(self, binary: str) -> int:
        """Spawn the node and wait until it answers (not until the cluster is ok)."""
        pid = spawn(self.command(binary), self.log_file, self.pid_file)
        wait_until(
            self.answers,
            NODE_START_TIMEOUT_S,
            f"Redis Cluster node {self.port} (log {self.log_file})",
            lambda: self.pid() is not None,
        )
        return pid

    def stop(self) -> bool:
        """SIGTERM (a clean shutdown: AOF and nodes.conf written); True if it was running."""
        return terminate(self.pid_file, MAIN_MARKER)

    def answers(self) -> bool:
        try:
            with _client(self.port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def cluster_info(self) -> dict[str, str]:
        """CLUSTER INFO as a dict; empty if the node does not answer (or is no cluster node)."""
        try:
            with _client(self.port) as client:
                text = str(client.execute_command("CLUSTER", "INFO"))
        except redis.RedisError:
            return {}
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def cluster_nodes(self) -> list[NodeEntry]:
        """CLUSTER NODES, parsed; empty if the node does not answer."""
        try:
            with _client(self.port) as client:
                text = str(client.execute_command("CLUSTER", "NODES"))
        except redis.RedisError:
            return []
        return [NodeEntry.parse(line) for line in text.splitlines() if line.strip()]

    def is_ok(self) -> bool:
        """cluster_state:ok, with every hash slot assigned to some primary."""
        info = self.cluster_info()
        slots = info.get("cluster_slots_assigned")
        return info.get("cluster_state") == "ok" and slots == str(HASH_SLOTS)

    def is_synced(self) -> bool:
        """A primary, or a replica whose link to its primary is up (it has a copy of the
        data, so it can take over)."""
        try:
            with _client(self.port) as client:
                reply = client.execute_command("ROLE")
        except redis.RedisError:
            return False
        return bool(reply[0] == "master" or reply[3] == "connected")

    def is_alone(self) -> bool:
        """Knows no other node and serves no slot: not part of a cluster yet."""
        info = self.cluster_info()
        return info.get("cluster_known_nodes") == "1" and info.get("cluster_slots_assigned") == "0"

    def role(self) -> str:
        """Its own word on its role: primary, replica of 127.0.0.1:PORT, or empty if it
        does not answer."""
        try:
            with _client(self.port) as client:
                reply = client.execute_command("ROLE")
        except redis.RedisError:
            return ""
        if reply[0] == "master":
            return "primary"
        return f"replica of {reply[1]}:{reply[2]}"


class LocalRedisCluster:
    """The six nodes at `base.port` … `base.port + 5`, under `var_dir/redis-cluster/`."""

    def __init__(self, var_dir: Path, base: Endpoint) -> None:
        self.home = var_dir / FOLDER
        self.base = base
        self.nodes = [self.node(base.port + offset) for offset in range(CLUSTER_SIZE)]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def node(self, port: int) -> RedisClusterNode:
        return RedisClusterNode(port, self.home / f"node-{port}")

    def holds(self, port: int) -> bool:
        return port in self.ports

    # -- nodes of any layout, found on disk (for `down` and `status` without the setting)
    @staticmethod
    def found_nodes(var_dir: Path) -> Iterator[RedisClusterNode]:
        """Every node folder with a pid file under `var_dir/redis-cluster/`, whatever port
        the cluster was started at."""
        for pid_file in sorted((var_dir / FOLDER).glob("node-*/redis.pid")):
            port = pid_file.parent.name.removeprefix("node-")
            if port.isdigit():
                yield RedisClusterNode(int(port), pid_file.parent)

    # -- forming -------------------------------------------------------------------------
    def needs_create(self) -> bool:
        """True if no node has been part of a cluster yet (a first start). A restart finds
        every node's nodes.conf, and the nodes find each other again by themselves."""
        alone = [node.is_alone() for node in self.nodes]
        if all(alone):
            return True
        if any(alone):
            raise StackError(
                f"the Redis Cluster at {self.base.port}–{self.base.port + CLUSTER_SIZE - 1} "
                f"is half formed (some nodes know no other node); stop it (`metering stack "
                f"down`) and remove {self.home} to form it afresh"
            )
        return False

    def create(self, cli: str) -> None:
        """`redis-cli --cluster create`: assign the slots to three primaries, a replica
        each. Every node must be running and empty."""
        argv = [
            cli,
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas",
            str(REPLICAS_PER_PRIMARY),
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=CREATE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"`{' '.join(argv)}` did not finish in {CREATE_TIMEOUT_S:.0f} s"
            ) from exc
        if done.returncode != 0:
            # redis-cli reports its errors on stdout, prefixed by [ERR].
            output = (done.stdout + done.stderr).strip().splitlines()
            reason = next((line for line in output if "ERR" in line), output[-1] if output else "")
            raise StackError(f"redis-cli --cluster create failed: {reason}")

    def wait_ok(self, timeout_s: float = CLUSTER_OK_TIMEOUT_S) -> None:
        """Until the six nodes have settled: every one reports cluster_state:ok with all
        16384 slots assigned, every replica has synced, and they agree who is who."""
        wait_until(
            lambda: settled(self.nodes),
            timeout_s,
            f"the Redis Cluster at {self.base.port}–{self.base.port + CLUSTER_SIZE - 1} "
            f"(logs under {self.home})",
            lambda: all(node.pid() is not None for node in self.nodes),
        )


def stop_nodes(nodes: Iterable[RedisClusterNode]) -> list[RedisClusterNode]:
    """Stop the running ones of `nodes` (cleanly: AOF and nodes.conf are written); returns
    those it stopped. Every node is signalled before any is waited for: stopped one by one,
    a replica still running could see its primary gone for longer than the node timeout and
    take over, so the next start would find the roles swapped."""
    running = [(node, pid) for node in nodes if (pid := node.pid()) is not None]
    for _, pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for node, _ in running:
        node.stop()  # waits for the exit (SIGKILL if it hangs), removes the pid file
    return [node for node, _ in running]
