"""Apache Kafka 4 brokers in KRaft mode (broker + controller in one JVM each): one node,
or a cluster of several (`METERING_KAFKA_BROKERS`, `metering stack up --kafka-brokers 3`)
whose nodes are also the controller quorum's voters.

The jars come from Maven Central through the pinned `kafka-broker-pom.xml`, resolved once
into a cache shared by every stack on the machine; storage is formatted on first start
(every node of a cluster with the same cluster id).

Ports: node n listens at the bootstrap port + NODE_PORT_STEP × (n − 1) and its controller
one port above that (one node: 9092 and 9093; three: 9092/9093, 9102/9103, 9112/9113).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from metering.stack.endpoints import Endpoint
from metering.stack.process import StackError

MAIN_CLASS = "kafka.Kafka"
NODE_PORT_STEP = 10
HOST = "127.0.0.1"  # every node binds IPv4 loopback
_POM = resources.files("metering.stack") / "kafka-broker-pom.xml"
_LOG4J2 = resources.files("metering.stack") / "log4j2.properties"
MIN_JAVA = 17


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", _POM.read_text())
    if match is None:  # pragma: no cover - the pom ships with the package
        raise StackError("kafka-broker-pom.xml has no <kafka.version>")
    return match.group(1)


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metering"


def check_java() -> str:
    """The `java` to run the broker with, or a StackError saying what to install."""
    java = shutil.which("java")
    hint = "install Java 17+ (apt-get install openjdk-17-jre-headless)"
    if java is None:
        raise StackError(f"Java not found: {hint}")
    output = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)', output)
    if match is None or int(match.group(1)) < MIN_JAVA:
        raise StackError(f"Kafka 4 needs Java {MIN_JAVA}+, found {output.splitlines()[:1]}: {hint}")
    return java


def resolve_classpath() -> Path:
    """The folder of broker jars, resolved with Maven on first use and cached by the
    pom's hash (so a version bump resolves again and old caches stay valid)."""
    pom_text = _POM.read_text()
    digest = hashlib.sha256(pom_text.encode()).hexdigest()[:12]
    lib = cache_root() / f"kafka-{kafka_version()}-{digest}"
    if (lib / ".complete").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven not found (needed once, to fetch the Kafka broker): apt-get install maven"
        )
    staging = lib.with_name(lib.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pom_path = staging / "pom.xml"
    pom_path.write_text(pom_text)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"Maven could not resolve Kafka {kafka_version()}: "
            f"{result.stdout[-400:]}{result.stderr[-400:]}"
        )
    (staging / ".complete").write_text(kafka_version())
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    return lib


def new_cluster_id() -> str:
    # Kafka's own format: 16 random bytes, URL-safe base64 without padding, and (like
    # Kafka's generator) never starting with '-', which its CLI would read as an option.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def node_port(bootstrap_port: int, node_id: int) -> int:
    return bootstrap_port + NODE_PORT_STEP * (node_id - 1)


def cluster_home(var_dir: Path) -> Path:
    """Where the nodes of a several-broker stack keep their data (one node: var/kafka)."""
    return var_dir / "kafka-cluster"


def cluster_bootstrap(bootstrap_port: int, nodes: int) -> str:
    """Every node's address, for METERING_KAFKA_BOOTSTRAP: a client then starts while any
    one of them is down."""
    return ",".join(f"{HOST}:{node_port(bootstrap_port, n)}" for n in range(1, nodes + 1))


class KafkaBroker:
    """Node `node_id` (1-based) of a stack of `nodes` brokers; the defaults are the
    single-node broker under var/kafka."""

    def __init__(
        self, var_dir: Path, endpoint: Endpoint, heap: str, node_id: int = 1, nodes: int = 1
    ) -> None:
        self.node_id, self.nodes = node_id, nodes
        self.home = var_dir / "kafka" if nodes == 1 else cluster_home(var_dir) / f"node-{node_id}"
        self.endpoint = Endpoint(endpoint.host, node_port(endpoint.port, node_id))
        self.controller_port = self.endpoint.port + 1  # documented in the README
        self.voters = ",".join(
            f"{n}@{HOST}:{node_port(endpoint.port, n) + 1}" for n in range(1, nodes + 1)
        )
        self.heap = heap
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "server.log"
        self.stdout_file = self.home / "stdout.log"
        self.config_file = self.home / "server.properties"
        self.data_dir = self.home / "data"

    @property
    def name(self) -> str:
        return "kafka" if self.nodes == 1 else f"kafka-{self.node_id}"

    def write_config(self) -> None:
        host = HOST
        # Three copies of every partition when there are three nodes or more, and a write
        # is acknowledged (acks=all) once two of them have it: one node can be lost without
        # losing an acknowledged write or refusing new ones. One node: one copy.
        replicas = min(self.nodes, 3)
        in_sync = min(replicas, 2)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "\n".join(
                [
                    "# Written by `metering stack up`; edits are overwritten.",
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={self.voters}",
                    f"listeners=PLAINTEXT://{host}:{self.endpoint.port},"
                    f"CONTROLLER://{host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{host}:{self.endpoint.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data_dir.resolve()}",
                    # The internal topics (consumer offsets, transactions, share groups) are
                    # replicated like ours: a group's coordinator survives losing its broker.
                    f"offsets.topic.replication.factor={replicas}",
                    f"transaction.state.log.replication.factor={replicas}",
                    f"transaction.state.log.min.isr={in_sync}",
                    f"share.coordinator.state.topic.replication.factor={replicas}",
                    f"share.coordinator.state.topic.min.isr={in_sync}",
                    # What the topics `stack up` and the tests create get: they ask for the
                    # broker's default (replication_factor=-1).
                    f"default.replication.factor={replicas}",
                    f"min.insync.replicas={in_sync}",
                    # Test consumer groups should not wait 3 s for peers that never come.
                    "group.initial.rebalance.delay.ms=0",
                    # A mistyped topic name must fail loudly, not create a new topic.
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                    "",
                ]
            )
        )

    def format_storage_once(self, java: str, classpath: Path, cluster_id: str) -> bool:
        """Format the log dir on first start; True if it did. Re-formatting would erase
        the log of record, so an existing `meta.properties` is never touched."""
        if (self.data_dir / "meta.properties").exists():
            return False
        result = subprocess.run(
            [
                java,
                "-cp",
                f"{classpath}/*",
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(self.config_file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")
        return True

    def command(self, java: str, classpath: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.home.resolve()}",
            f"-Dlog4j2.configurationFile={_LOG4J2}",
            "-cp",
            f"{classpath}/*",
            MAIN_CLASS,
            str(self.config_file.resolve()),
        ]
