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
from metering.stack.kafka_broker import MAIN_CLASS, KafkaBroker, check_java, resolve_classpath
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
        self.kafka = KafkaBroker(settings.var_dir, self.kafka_endpoint, settings.kafka_heap)
        self.redis = RedisServer(settings.var_dir, self.redis_endpoint)

    # -- queries ---------------------------------------------------------------
    def _kafka_pid(self) -> int | None:
        return read_pid(self.kafka.pid_file, MAIN_CLASS)

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

    def status(self) -> list[ComponentStatus]:
        kafka_pid, redis_pid = self._kafka_pid(), self._redis_pid()
        kafka_state = self._state(kafka_pid, self._kafka_answers())
        redis_state = self._state(redis_pid, self._redis_answers())
        return [
            ComponentStatus(
                "kafka",
                kafka_state,
                str(self.kafka_endpoint),
                kafka_pid,
                f"log {self.kafka.log_file}" if kafka_pid else "",
            ),
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
        components = [self._up_kafka(), self._up_redis()]
        topics = ensure_topics(
            admin_client(self.settings.kafka_bootstrap),
            self.settings.topic_partitions,
            self.settings.topics.specs(),  # under METERING_TOPIC_NAMESPACE, if set
        )
        return components, topics

    # -- down ------------------------------------------------------------------
    def down(
        self, components: frozenset[str] = frozenset({"kafka", "redis"})
    ) -> list[ComponentStatus]:
        """Stop what this stack started (of `components`); leave external services alone."""
        results = []
        for name, pid_file, marker, endpoint, answers in (
            ("kafka", self.kafka.pid_file, MAIN_CLASS, self.kafka_endpoint, self._kafka_answers),
            ("redis", self.redis.pid_file, MAIN_MARKER, self.redis_endpoint, self._redis_answers),
        ):
            if name not in components:
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
