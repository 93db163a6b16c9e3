"""`metering stack up | down | status`: start, stop and inspect the local stack.

A service already answering at its configured endpoint is used as it is (an external
cluster, or a stack started by another checkout) and never stopped by `down`; the stack
only starts, and stops, what it started itself (recorded in pid files under `var/`).

With METERING_REDIS_CLUSTER, Redis is a local Redis Cluster of six nodes
(metering/stack/redis_cluster.py) instead of one server; `down` stops any such nodes it
finds, with or without the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import redis

from metering.settings import Settings
from metering.stack.endpoints import Endpoint, kafka_endpoint, redis_endpoint
from metering.stack.kafka_broker import MAIN_CLASS, KafkaBroker, check_java, resolve_classpath
from metering.stack.process import (
    StackError,
    port_open,
    read_pid,
    spawn,
    terminate,
    wait_until,
)
from metering.stack.redis_cluster import (
    CLUSTER_SIZE,
    LocalRedisCluster,
    RedisClusterNode,
    check_redis_cli,
    stop_nodes,
)
from metering.stack.redis_server import (
    MAIN_MARKER,
    RedisServer,
    check_redis_server,
    probe_client,
    running_port,
)
from metering.topics import TopicState, admin_client, ensure_topics

KAFKA_START_TIMEOUT_S = 90.0
REDIS_START_TIMEOUT_S = 20.0
# The name of every node's row: `down(frozenset({REDIS_CLUSTER}))` stops them all, and so
# does the test harness's `down(<names of what up started>)`.
REDIS_CLUSTER = "redis-cluster"
ALL_COMPONENTS = frozenset({"kafka", "redis", REDIS_CLUSTER})


class State(StrEnum):
    STARTED = "started"  # started by this call
    RUNNING = "running"  # already running, started by this stack
    EXTERNAL = "external"  # answering, but not started by this stack
    STOPPED = "stopped"
    DOWN = "down"  # not answering
    EMBEDDED = "embedded"  # in-process chDB: opened by whichever process uses it


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: State
    endpoint: str
    pid: int | None = None
    detail: str = ""


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka_endpoint = kafka_endpoint(settings.kafka_bootstrap)
        self.redis_endpoint = redis_endpoint(settings.redis_url)
        self.kafka = KafkaBroker(settings.var_dir, self.kafka_endpoint, settings.kafka_heap)
        self.redis = RedisServer(settings.var_dir, self.redis_endpoint)
        self.redis_cluster = LocalRedisCluster(settings.var_dir, self.redis_endpoint)

    # -- queries ---------------------------------------------------------------
    def _kafka_pid(self) -> int | None:
        return read_pid(self.kafka.pid_file, MAIN_CLASS)

    def _redis_pid(self) -> int | None:
        return read_pid(self.redis.pid_file, MAIN_MARKER)

    def _redis_answers(self) -> bool:
        try:
            with probe_client(self.redis_endpoint.connect_host, self.redis_endpoint.port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _kafka_answers(self) -> bool:
        # Ready means the broker serves metadata, not merely that the port is bound.
        if not port_open(self.kafka_endpoint.connect_host, self.kafka_endpoint.port):
            return False
        try:
            admin_client(self.settings.kafka_bootstrap).list_topics(timeout=2)
        except Exception:
            return False
        return True

    def _state(self, pid: int | None, answers: bool) -> State:
        if pid is not None:
            return State.RUNNING
        return State.EXTERNAL if answers else State.DOWN

    def status(self) -> list[ComponentStatus]:
        kafka_pid = self._kafka_pid()
        kafka_state = self._state(kafka_pid, self._kafka_answers())
        return [
            ComponentStatus(
                "kafka",
                kafka_state,
                str(self.kafka_endpoint),
                kafka_pid,
                f"log {self.kafka.log_file}" if kafka_pid else "",
            ),
            *self._redis_status(),
            ComponentStatus(
                "clickhouse",
                State.EXTERNAL if self.settings.clickhouse_url else State.EMBEDDED,
                self.settings.resolved_clickhouse_url,
            ),
        ]

    def _redis_status(self) -> list[ComponentStatus]:
        """The single Redis, unless the cluster is configured (then only if this stack's
        single Redis runs anyway), and a row per cluster node: the configured six, or the
        ones found running without the setting."""
        redis_pid = self._redis_pid()
        cluster_nodes = self._cluster_nodes_in_view()
        rows = []
        # A node of ours at METERING_REDIS_URL's port has its own row below; as the single
        # Redis it would show as an external one.
        clashes = any(node.port == self.redis_endpoint.port for node in cluster_nodes)
        if redis_pid is not None or not (self.settings.redis_cluster or clashes):
            rows.append(
                ComponentStatus(
                    "redis",
                    self._state(redis_pid, self._redis_answers()),
                    str(self.redis_endpoint),
                    redis_pid,
                    f"log {self.redis.log_file}" if redis_pid else "",
                )
            )
        rows += [self._node_status(node) for node in cluster_nodes]
        return rows

    def _cluster_nodes_in_view(self) -> list[RedisClusterNode]:
        if self.settings.redis_cluster:
            return self.redis_cluster.nodes
        return [
            node
            for node in LocalRedisCluster.found_nodes(self.settings.var_dir)
            if node.pid() is not None
        ]

    def _node_status(
        self, node: RedisClusterNode, state: State | None = None, created: bool = False
    ) -> ComponentStatus:
        pid = node.pid()
        role = node.role()  # also tells whether it answers
        details = (
            role,
            f"log {node.log_file}" if pid else "",
            "cluster created" if created else "",
        )
        return ComponentStatus(
            REDIS_CLUSTER,
            state or self._state(pid, bool(role)),
            str(node.endpoint),
            pid,
            ", ".join(detail for detail in details if detail),
        )

    # -- up --------------------------------------------------------------------
    def _refuse_remote(self, what: str, endpoint: Endpoint) -> None:
        if not endpoint.is_local:
            raise StackError(
                f"{what} at {endpoint} does not answer, and it is not on this machine, "
                "so `metering stack up` cannot start it"
            )

    def _up_kafka(self) -> ComponentStatus:
        pid = self._kafka_pid()
        if pid is not None or self._kafka_answers():
            if pid is not None:
                wait_until(
                    self._kafka_answers,
                    KAFKA_START_TIMEOUT_S,
                    "Kafka",
                    lambda: self._kafka_pid() is not None,
                )
            return ComponentStatus("kafka", self._state(pid, True), str(self.kafka_endpoint), pid)
        self._refuse_remote("Kafka", self.kafka_endpoint)
        java = check_java()
        classpath = resolve_classpath()
        self.kafka.write_config()
        formatted = self.kafka.format_storage_once(java, classpath)
        pid = spawn(
            self.kafka.command(java, classpath), self.kafka.stdout_file, self.kafka.pid_file
        )
        wait_until(
            self._kafka_answers,
            KAFKA_START_TIMEOUT_S,
            f"Kafka (log {self.kafka.log_file})",
            lambda: self._kafka_pid() is not None,
        )
        return ComponentStatus(
            "kafka",
            State.STARTED,
            str(self.kafka_endpoint),
            pid,
            "storage formatted" if formatted else "",
        )

    def _up_redis(self) -> ComponentStatus:
        pid = self._redis_pid()
        if pid is None:
            self._refuse_cluster_node_at(self.redis_endpoint.port)
        if pid is not None or self._redis_answers():
            return ComponentStatus("redis", self._state(pid, True), str(self.redis_endpoint), pid)
        self._refuse_remote("Redis", self.redis_endpoint)
        binary = check_redis_server()
        pid = spawn(self.redis.command(binary), self.redis.log_file, self.redis.pid_file)
        wait_until(
            self._redis_answers,
            REDIS_START_TIMEOUT_S,
            f"Redis (log {self.redis.log_file})",
            lambda: self._redis_pid() is not None,
        )
        return ComponentStatus("redis", State.STARTED, str(self.redis_endpoint), pid)

    def _refuse_cluster_node_at(self, port: int) -> None:
        for node in LocalRedisCluster.found_nodes(self.settings.var_dir):
            if node.port == port and node.pid() is not None:
                raise StackError(
                    f"port {port} is a node of the Redis Cluster this stack started: stop it "
                    "(`metering stack down`), or set METERING_REDIS_CLUSTER=true to use it"
                )

    def _refuse_single_redis_in(self, cluster: LocalRedisCluster) -> None:
        pid = self._redis_pid()
        port = running_port(pid) if pid is not None else None
        if pid is not None and (port is None or cluster.holds(port)):
            raise StackError(
                f"the single Redis this stack started (pid {pid}, port {port or 'unknown'}) "
                f"is in the way of the Redis Cluster at {cluster.ports[0]}–{cluster.ports[-1]}: "
                "stop it first (`metering stack down`)"
            )

    def _up_redis_cluster(self) -> list[ComponentStatus]:
        cluster = self.redis_cluster
        self._refuse_single_redis_in(cluster)
        pids = [node.pid() for node in cluster.nodes]
        answering = [
            node.port
            for node, pid in zip(cluster.nodes, pids, strict=True)
            if pid is None and node.answers()
        ]
        if len(answering) == CLUSTER_SIZE:  # a cluster this stack did not start: use it
            return [self._node_status(node, State.EXTERNAL) for node in cluster.nodes]
        if answering:
            raise StackError(
                f"ports {answering} of the Redis Cluster at {cluster.ports[0]}–"
                f"{cluster.ports[-1]} answer, but not as nodes this stack started"
            )
        self._refuse_remote("Redis Cluster", self.redis_endpoint)
        binary = check_redis_server()
        for node, pid in zip(cluster.nodes, pids, strict=True):
            if pid is None:
                node.start(binary)
        created = cluster.needs_create()
        if created:
            cluster.create(check_redis_cli())
        cluster.wait_ok()
        return [
            self._node_status(node, State.STARTED if pid is None else State.RUNNING, created)
            for node, pid in zip(cluster.nodes, pids, strict=True)
        ]

    def up_redis(self) -> list[ComponentStatus]:
        """Start Redis (a single server, or the six cluster nodes with
        METERING_REDIS_CLUSTER) unless it answers. Safe to repeat."""
        if self.settings.redis_cluster:
            return self._up_redis_cluster()
        return [self._up_redis()]

    def up(self) -> tuple[list[ComponentStatus], list[TopicState]]:
        """Start what is not running, then create missing topics. Safe to repeat."""
        components = [self._up_kafka(), *self.up_redis()]
        topics = ensure_topics(
            admin_client(self.settings.kafka_bootstrap),
            self.settings.topic_partitions,
            self.settings.topics.specs(),  # under METERING_TOPIC_NAMESPACE, if set
        )
        return components, topics

    # -- down ------------------------------------------------------------------
    def down(self, components: frozenset[str] = ALL_COMPONENTS) -> list[ComponentStatus]:
        """Stop what this stack started (of `components`); leave external services alone.
        Cluster nodes are found by their pid files, so they stop even without
        METERING_REDIS_CLUSTER."""
        kafka = []
        if "kafka" in components:
            kafka = [
                self._down_one(
                    "kafka",
                    self.kafka.pid_file,
                    MAIN_CLASS,
                    self.kafka_endpoint,
                    self._kafka_answers,
                )
            ]
        # The cluster first: with it stopped, a node at METERING_REDIS_URL's port is not
        # reported as an external single Redis.
        nodes = self._down_redis_cluster() if REDIS_CLUSTER in components else []
        single = []
        if "redis" in components:
            row = self._down_one(
                "redis", self.redis.pid_file, MAIN_MARKER, self.redis_endpoint, self._redis_answers
            )
            # With the cluster configured, the single Redis matters only if it ran.
            if not self.settings.redis_cluster or row.state is State.STOPPED:
                single = [row]
        return [*kafka, *single, *nodes]

    def _down_one(
        self,
        name: str,
        pid_file: Path,
        marker: str,
        endpoint: Endpoint,
        answers: Callable[[], bool],
    ) -> ComponentStatus:
        if terminate(pid_file, marker):
            return ComponentStatus(name, State.STOPPED, str(endpoint))
        if answers():
            return ComponentStatus(
                name,
                State.EXTERNAL,
                str(endpoint),
                detail="not started by this stack; left running",
            )
        return ComponentStatus(name, State.DOWN, str(endpoint))

    def _down_redis_cluster(self) -> list[ComponentStatus]:
        nodes = {node.port: node for node in LocalRedisCluster.found_nodes(self.settings.var_dir)}
        if self.settings.redis_cluster:
            nodes |= {node.port: node for node in self.redis_cluster.nodes}
        stopped = {node.port for node in stop_nodes(nodes.values())}
        rows = []
        for port, node in sorted(nodes.items()):
            if port in stopped:
                rows.append(ComponentStatus(REDIS_CLUSTER, State.STOPPED, str(node.endpoint)))
            elif node.answers():
                rows.append(
                    ComponentStatus(
                        REDIS_CLUSTER,
                        State.EXTERNAL,
                        str(node.endpoint),
                        detail="not started by this stack; left running",
                    )
                )
            else:
                rows.append(ComponentStatus(REDIS_CLUSTER, State.DOWN, str(node.endpoint)))
        return rows
