"""A single-node Apache Kafka 4 broker in KRaft mode (broker + controller in one JVM).

The jars come from Maven Central through the pinned `kafka-broker-pom.xml`, resolved once
into a cache shared by every stack on the machine; storage is formatted on first start.
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


def _cluster_id() -> str:
    # Kafka's own format: 16 random bytes, URL-safe base64 without padding, and (like
    # Kafka's generator) never starting with '-', which its CLI would read as an option.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaBroker:
    def __init__(self, var_dir: Path, endpoint: Endpoint, heap: str) -> None:
        self.home = var_dir / "kafka"
        self.endpoint = endpoint
        self.controller_port = endpoint.port + 1  # documented in the README
        self.heap = heap
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "server.log"
        self.stdout_file = self.home / "stdout.log"
        self.config_file = self.home / "server.properties"
        self.data_dir = self.home / "data"

    def write_config(self) -> None:
        host = "127.0.0.1"
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "\n".join(
                [
                    "# Written by `metering stack up`; edits are overwritten.",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{host}:{self.endpoint.port},"
                    f"CONTROLLER://{host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{host}:{self.endpoint.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data_dir.resolve()}",
                    # One node: every internal topic has a single replica.
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # Test consumer groups should not wait 3 s for peers that never come.
                    "group.initial.rebalance.delay.ms=0",
                    # A mistyped topic name must fail loudly, not create a new topic.
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                    "",
                ]
            )
        )

    def format_storage_once(self, java: str, classpath: Path) -> bool:
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
                _cluster_id(),
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
