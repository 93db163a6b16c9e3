"""`metering stack up | down | status`: start, stop and inspect the local stack.

A service already answering at its configured endpoint is used as it is (an external
cluster, or a stack started by another checkout) and never stopped by `down`; the stack
only starts, and stops, what it started itself (recorded in pid files under `var/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis

from metering.settings import Settings
from metering.stack.endpoints import Endpoint, kafka_endpoint, redis_endpoint
from metering.stack.kafka_broker import (
    MAIN_CLASS,
    KafkaBroker,
    check_java,
    cluster_home,
    new_cluster_id,
    resolve_classpath,
)
from metering.stack.process import (
    StackError,
    port_open,
    read_pid,
    spawn,
    terminate,
    wait_until,
)
from metering.stack.redis_server import MAIN_MARKER, RedisServer, check_redis_server
from metering.topics import TopicState, admin_client, ensure_topics

KAFKA_START_TIMEOUT_S = 90.0
REDIS_START_TIMEOUT_S = 20.0


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
        nodes = settings.kafka_brokers
        self.kafka_nodes = [
            KafkaBroker(settings.var_dir, self.kafka_endpoint, settings.kafka_heap, n, nodes)
            for n in range(1, nodes + 1)
        ]
        self.kafka = self.kafka_nodes[0]
        self.redis = RedisServer(settings.var_dir, self.redis_endpoint)

    # -- queries ---------------------------------------------------------------
    def _kafka_pid(self) -> int | None:
        return read_pid(self.kafka.pid_file, MAIN_CLASS)

    def node_pid(self, node: KafkaBroker) -> int | None:
        return read_pid(node.pid_file, MAIN_CLASS)

    def _brokers_answering(self) -> int:
        """How many brokers the cluster's metadata lists (0: none answers)."""
        if not port_open(self.kafka_endpoint.connect_host, self.kafka_endpoint.port):
            return 0
        try:
            metadata = admin_client(self.settings.kafka_bootstrap).list_topics(timeout=2)
        except Exception:
            return 0
        return len(metadata.brokers)

    def _redis_pid(self) -> int | None:
        return read_pid(self.redis.pid_file, MAIN_MARKER)

    def _redis_answers(self) -> bool:
        try:
            client = redis.Redis(
                host=self.redis_endpoint.connect_host,
                port=self.redis_endpoint.port,
                socket_timeout=1,
                socket_connect_timeout=1,
            )
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

    def _node_status(self, node: KafkaBroker) -> ComponentStatus:
        pid = self.node_pid(node)
        answers = port_open(node.endpoint.connect_host, node.endpoint.port)
        if node.nodes == 1:
            answers = self._kafka_answers()
        return ComponentStatus(
            node.name,
            self._state(pid, answers),
            str(node.endpoint),
            pid,
            f"log {node.log_file}" if pid else "",
        )

    def status(self) -> list[ComponentStatus]:
        redis_pid = self._redis_pid()
        redis_state = self._state(redis_pid, self._redis_answers())
        return [
            *(self._node_status(node) for node in self.kafka_nodes),
            ComponentStatus(
                "redis",
                redis_state,
                str(self.redis_endpoint),
                redis_pid,
                f"log {self.redis.log_file}" if redis_pid else "",
            ),
            ComponentStatus(
                "clickhouse",
                State.EXTERNAL if self.settings.clickhouse_url else State.EMBEDDED,
                self.settings.resolved_clickhouse_url,
            ),
        ]

    # -- up --------------------------------------------------------------------
    def _refuse_remote(self, what: str, endpoint: Endpoint) -> None:
        if not endpoint.is_local:
            raise StackError(
                f"{what} at {endpoint} does not answer, and it is not on this machine, "
                "so `metering stack up` cannot start it"
            )

    def _up_kafka_nodes(self) -> list[ComponentStatus]:
        """Start every node of a several-broker stack that is not running, then wait until
        the cluster lists them all."""
        for node in self.kafka_nodes:
            if not node.endpoint.is_local:
                self._refuse_remote("Kafka", node.endpoint)
        single = KafkaBroker(self.settings.var_dir, self.kafka_endpoint, self.settings.kafka_heap)
        if self.node_pid(single) is not None:
            raise StackError(
                f"this stack's single-node Kafka runs on {single.endpoint}: stop it "
                "(`metering stack down`) before starting a cluster of "
                f"{len(self.kafka_nodes)} (its data stays in {single.home})"
            )
        java, classpath = check_java(), resolve_classpath()
        id_file = cluster_home(self.settings.var_dir) / "cluster.id"
        if not id_file.exists():
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(new_cluster_id())
        cluster_id = id_file.read_text().strip()
        started: dict[str, tuple[int, bool]] = {}
        for node in self.kafka_nodes:
            if self.node_pid(node) is not None or port_open(
                node.endpoint.connect_host, node.endpoint.port
            ):
                continue
            node.write_config()
            formatted = node.format_storage_once(java, classpath, cluster_id)
            pid = spawn(node.command(java, classpath), node.stdout_file, node.pid_file)
            started[node.name] = (pid, formatted)
        wanted = len(self.kafka_nodes)
        wait_until(
            lambda: self._brokers_answering() >= wanted,
            KAFKA_START_TIMEOUT_S,
            f"{wanted} Kafka brokers (logs under {cluster_home(self.settings.var_dir)})",
            lambda: all(self.node_pid(n) is not None for n in self._started(started)),
        )
        statuses = []
        for node in self.kafka_nodes:
            if node.name in started:
                pid, formatted = started[node.name]
                detail = "storage formatted" if formatted else ""
                statuses.append(
                    ComponentStatus(node.name, State.STARTED, str(node.endpoint), pid, detail)
                )
            else:
                statuses.append(self._node_status(node))
        return statuses

    def _started(self, names: dict[str, tuple[int, bool]]) -> list[KafkaBroker]:
        return [node for node in self.kafka_nodes if node.name in names]

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
        formatted = self.kafka.format_storage_once(java, classpath, new_cluster_id())
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

    def up(self) -> tuple[list[ComponentStatus], list[TopicState]]:
        """Start what is not running, then create missing topics. Safe to repeat."""
        if len(self.kafka_nodes) > 1:
            components = [*self._up_kafka_nodes(), self._up_redis()]
        else:
            components = [self._up_kafka(), self._up_redis()]
        topics = ensure_topics(
            admin_client(self.settings.kafka_bootstrap),
            self.settings.topic_partitions,
            self.settings.topics.specs(),  # under METERING_TOPIC_NAMESPACE, if set
        )
        return components, topics

    # -- down ------------------------------------------------------------------
    def _cluster_nodes_found(self) -> list[KafkaBroker]:
        """The nodes of a several-broker stack under var/, whatever METERING_KAFKA_BROKERS
        says now: `down` stops every node `up --kafka-brokers N` started."""
        home = cluster_home(self.settings.var_dir)
        found = sorted(home.glob("node-*/broker.pid")) if home.exists() else []
        count = max((int(p.parent.name.removeprefix("node-")) for p in found), default=0)
        if count <= 1:
            return [n for n in self.kafka_nodes if n.nodes > 1]
        return [
            KafkaBroker(
                self.settings.var_dir, self.kafka_endpoint, self.settings.kafka_heap, n, count
            )
            for n in range(1, count + 1)
        ]

    def stop_node(self, node: KafkaBroker) -> bool:
        return terminate(node.pid_file, MAIN_CLASS)

    def down(
        self, components: frozenset[str] = frozenset({"kafka", "redis"})
    ) -> list[ComponentStatus]:
        """Stop what this stack started (of `components`); leave external services alone."""
        results = []
        if "kafka" in components:
            for node in self._cluster_nodes_found():
                stopped = self.stop_node(node)
                state = State.STOPPED if stopped else State.DOWN
                results.append(ComponentStatus(node.name, state, str(node.endpoint)))
        for name, pid_file, marker, endpoint, answers in (
            ("kafka", self.kafka.pid_file, MAIN_CLASS, self.kafka_endpoint, self._kafka_answers),
            ("redis", self.redis.pid_file, MAIN_MARKER, self.redis_endpoint, self._redis_answers),
        ):
            if name not in components or (name == "kafka" and len(self.kafka_nodes) > 1):
                continue
            if terminate(pid_file, marker):
                results.append(ComponentStatus(name, State.STOPPED, str(endpoint)))
            elif answers():
                results.append(
                    ComponentStatus(
                        name,
                        State.EXTERNAL,
                        str(endpoint),
                        detail="not started by this stack; left running",
                    )
                )
            else:
                results.append(ComponentStatus(name, State.DOWN, str(endpoint)))
        return results
