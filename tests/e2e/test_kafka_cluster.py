"""A 3-broker Kafka cluster that loses a broker while usage flows (issue 15, item 3).

`LocalStack` with `kafka_brokers=3` starts three KRaft nodes of this test's own (each a
broker and a controller voter, 256 MiB heaps) on free ports, as `metering stack up
--kafka-brokers 3` does; topics get three replicas and `min.insync.replicas=2`, and so do
the consumer offsets. A worker prices usage from three orgs while the emitter sends it at
a steady pace:
1. the leader of the busiest org's partition is SIGKILLed;
2. usage goes on until another broker leads that partition (the controller fences the
   dead broker after its 9 s session timeout) and RESTART_AFTER_S have passed;
3. the broker is started again (`up_kafka`, what `stack up` does for a node that is
   down) while usage goes on, until it is back in every partition's ISR; a little more
   usage follows.
Then:
- every record the emitter reported delivered is on the input topic exactly once, and
  no record is there that it did not report (the idempotent producer's retries);
- every delivered event is priced, none dead-lettered (accepted + dead-lettered =
  produced); an event priced twice may only be the same record published again after a
  replay (same source offset), never a second pricing;
- Redis holds the reference model's spend for each org (tests/e2e/reference.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # untyped in .admin
from confluent_kafka.admin._resource import ResourceType

from metering.emitter import Emitter
from metering.enforcement.keys import OrgKeys
from metering.redis_clients import sync_client
from metering.settings import Settings
from metering.stack.kafka_broker import KafkaBroker, cluster_bootstrap, node_port
from metering.stack.local import LocalStack, State
from metering.topics import admin_client, wait_until_every_broker_knows
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.reference import Reference
from tests.e2e.scenario import new_org, spend

pytestmark = pytest.mark.stack

BROKERS = 3
ORGS = ("org_big",) * 6 + ("org_mid",) * 3 + ("org_small",)  # six events in ten: org_big
SEATS = {"u1": "enterprise", "u2": "enterprise"}
PACE_S = 0.005  # between two events: a flow (~150/s), so the failover happens mid-stream
BEFORE_KILL = 1_500
# Longer than the brokers' session timeout (9 s): the controller has fenced the killed
# broker and moved its partitions' leadership while the flow went on.
RESTART_AFTER_S = 15.0
FAILOVER_TIMEOUT_S = 60.0
REJOIN_TIMEOUT_S = 150.0  # start (up to KAFKA_START_TIMEOUT_S) and catch up
AFTER_REJOIN = 500
# Base ports are drawn from here: below the kernel's ephemeral range (32768+), so no
# outgoing connection holds one, and away from the Redis Cluster tests' 21000–22700.
BASE_PORTS = range(23000, 24500)


# -- the cluster -----------------------------------------------------------------------
def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base_port() -> int:
    """A port P with every node's ports free: P + 10 (n − 1) and the controller's above."""
    for _ in range(500):
        base = random.choice(BASE_PORTS)
        ports = [node_port(base, n) + extra for n in range(1, BROKERS + 1) for extra in (0, 1)]
        if all(_bindable(port) for port in ports):
            return base
    raise RuntimeError(f"no free ports for {BROKERS} brokers in {BASE_PORTS}")


@pytest.fixture
def cluster(stack: RunningStack, tmp_path: Path) -> Iterator[LocalStack]:
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=cluster_bootstrap(_free_base_port(), BROKERS),
        kafka_brokers=BROKERS,
        kafka_heap="256m",  # three JVMs on a 2-core machine next to the session's broker
        redis_url=stack.settings.redis_url,  # the session's Redis
        topic_partitions=1,  # `up`'s own topics are not used here
    )
    local = LocalStack(settings)
    try:
        components, _topics = local.up()
        nodes = [(c.name, c.state) for c in components[:BROKERS]]
        assert nodes == [(f"kafka-{n}", State.STARTED) for n in range(1, BROKERS + 1)]
        yield local
    finally:
        began = time.monotonic()
        stopped = local.down(frozenset({"kafka"}))
        print(f"cluster down in {time.monotonic() - began:.1f} s")
    # `down` stops every node, the one started again included
    assert [(r.name, r.state) for r in stopped] == [
        (f"kafka-{n}", State.STOPPED) for n in range(1, BROKERS + 1)
    ]


def _topic_config(admin: AdminClient, topic: str, key: str, timeout_s: float = 30.0) -> str:
    """One config value of a topic. describe_configs goes to any broker, and one that has
    not learned of the topic yet answers UNKNOWN_TOPIC_OR_PART: asked again briefly
    (ensure_topics already waits until every broker knows the topics it creates)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout=10)
            return str(configs[key].value)
        except KafkaException as exc:
            unknown = exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            if not unknown or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _replication(admin: AdminClient, topic: str) -> tuple[set[int], set[int], str]:
    """Replicas per partition, in-sync replicas per partition, min.insync.replicas. The
    consumer offsets are created by the broker when a group first needs them, so this
    first waits until every broker knows `topic` (whichever answers then knows it)."""
    wait_until_every_broker_knows(admin, {topic: None}, timeout_s=30)
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    return (
        {len(p.replicas) for p in partitions},
        {len(p.isrs) for p in partitions},
        _topic_config(admin, topic, "min.insync.replicas"),
    )


def _leader(admin: AdminClient, topic: str, partition: int) -> int:
    """The partition's leader as the cluster's metadata says now (-1: none, or no
    answer)."""
    try:
        metadata = admin.list_topics(topic, timeout=5)
    except KafkaException:
        return -1
    found = metadata.topics[topic].partitions.get(partition)
    return found.leader if found is not None and found.error is None else -1


def _all_in_sync(admin: AdminClient, topic: str) -> bool:
    try:
        partitions = admin.list_topics(topic, timeout=5).topics[topic].partitions.values()
    except KafkaException:
        return False
    return bool(partitions) and all(len(p.isrs) == BROKERS for p in partitions)


def _kill(cluster: LocalStack, node: KafkaBroker) -> None:
    pid = cluster.node_pid(node)
    assert pid is not None, f"{node.name} is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cluster.node_pid(node) is not None:  # also reaps it: the test started it
        assert time.monotonic() < deadline, f"{node.name} still runs after SIGKILL"
        time.sleep(0.05)


class Restart(threading.Thread):
    """`up_kafka` in the background, as `metering stack up --kafka-brokers 3` run again:
    it starts the node that is down and waits until every node sees all three."""

    def __init__(self, cluster: LocalStack) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.cluster.up_kafka()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


# -- the flow ------------------------------------------------------------------------
@dataclass
class Flow:
    """Usage sent at a steady pace; every event kept with its delivery future."""

    emitter: Emitter
    sent: list[tuple[dict[str, Any], Future[Message]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def one(self) -> None:
        n = len(self.sent)
        event = spend(ORGS[n % len(ORGS)], f"u{1 + n % 2}", 1 + n % 3)
        self.sent.append((event, self.emitter.emit_usage(event)))
        time.sleep(PACE_S)

    def send(self, count: int) -> None:
        for _ in range(count):
            self.one()

    def send_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Keep sending until `done()` (asked every half second); fail after `timeout_s`.
        How long it took is kept in `timings[what]`."""
        began = time.monotonic()
        next_check = began
        while True:
            now = time.monotonic()
            if now >= next_check:
                if done():
                    self.timings[what] = now - began
                    return
                assert now - began < timeout_s, f"no {what} within {timeout_s:.0f} s"
                next_check = now + 0.5
            self.one()


def _read_to_end(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every record of `topic`, read up to the end offsets of when it was called."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                if message.error():
                    raise KafkaException(message.error())
                found.append(json.loads(message.value() or b""))
                partition, offset = message.partition(), message.offset()
                if partition in ends and offset is not None and offset + 1 >= ends[partition]:
                    del ends[partition]
        assert not ends, f"could not read {topic} to its end: {ends} left"
        return found
    finally:
        consumer.close()


def _redis_spend(pipeline: Pipeline, org: str, month: str) -> dict[str, int]:
    client = sync_client(pipeline.settings, decode_responses=True)
    try:
        found = client.hgetall(OrgKeys(pipeline.settings.redis_prefix, org).spend(month))
    finally:
        client.close()
    return {str(name): int(value) for name, value in found.items() if int(value)}


# Lines repeated every 0.1–1 s while a broker is down (aiokafka's and the brokers'
# reconnection attempts): left out of a failure's report, which they would fill.
NOISE = (
    "Unable connect to node",
    "Failed fetch messages",
    "could not be established",
    "Error in response for fetch request",
)


def _last_lines(path: Path, count: int, warnings_only: bool = False) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return [f"({path} not readable)"]
    kept = [
        line[:300]
        for line in lines
        if line.strip()
        and not any(noise in line for noise in NOISE)
        and (not warnings_only or "WARN" in line or "ERROR" in line)
    ]
    return kept[-count:]


def _diagnostics(cluster: LocalStack, pipeline: Pipeline) -> str:
    """What a failure on a CI machine needs: the worker's last lines and every broker's
    last warnings (without the reconnection noise), with the paths of the full logs."""
    lines = [f"worker log {pipeline.log_path}:", *_last_lines(pipeline.log_path, 30)]
    for node in cluster.kafka_cluster:
        pid = cluster.node_pid(node)
        lines.append(f"{node.name} (pid {pid}) log {node.log_file}, its last warnings:")
        lines += _last_lines(node.log_file, 10, warnings_only=True)
    return "\n".join(lines)


# -- the test ------------------------------------------------------------------------
def test_losing_the_busiest_partitions_leader_loses_and_doubles_nothing(
    cluster: LocalStack, tmp_path: Path
) -> None:
    pipeline = new_pipeline(cluster.settings, tmp_path)
    try:
        _run(cluster, pipeline)
    except Exception as exc:
        exc.add_note(_diagnostics(cluster, pipeline))
        raise
    finally:
        cleanup(pipeline)


def _run(cluster: LocalStack, pipeline: Pipeline) -> None:
    settings, topics = pipeline.settings, pipeline.topics
    admin = admin_client(settings.kafka_bootstrap)
    # Given topics with three replicas, all in sync, and two needed for a write
    for topic in (topics.usage_events, topics.usage_priced):
        assert _replication(admin, topic) == ({BROKERS}, {BROKERS}, "2"), topic
    # …and three orgs the worker knows
    pipeline.send_accounts(
        *(e for org in set(ORGS) for e in new_org(org, mode="sales_assisted", credits=None))
    )
    pipeline.start_worker()
    for org in set(ORGS):
        pipeline.wait_for_gate(org, "u1", None, timeout_s=90)
    # …whose consumer offsets are replicated like the topics
    assert _replication(admin, "__consumer_offsets") == ({BROKERS}, {BROKERS}, "2")

    with pipeline.emitter() as emitter:
        flow = Flow(emitter)
        # When usage flows and the leader of the busiest org's partition is SIGKILLed
        flow.send(BEFORE_KILL)
        emitter.flush()
        partition = next(f for e, f in flow.sent if e["org_id"] == "org_big").result().partition()
        assert partition is not None
        leader = _leader(admin, topics.usage_events, partition)
        assert leader in range(1, BROKERS + 1), f"partition {partition} has no leader"
        killed = cluster.kafka_cluster[leader - 1]
        _kill(cluster, killed)
        killed_at = time.monotonic()
        survivors = admin_client(
            ",".join(str(n.endpoint) for n in cluster.kafka_cluster if n is not killed)
        )

        # Then another broker leads that partition while usage goes on
        leaders = [leader]

        def moved() -> bool:
            leaders.append(_leader(survivors, topics.usage_events, partition))
            return leaders[-1] not in {-1, killed.node_id}

        flow.send_until(moved, FAILOVER_TIMEOUT_S, "new leader")
        flow.send_until(lambda: time.monotonic() - killed_at >= RESTART_AFTER_S, 60, "restart time")

        # When the broker is started again while usage goes on, it rejoins every ISR
        restart = Restart(cluster)
        restart.start()

        def rejoined() -> bool:
            if restart.is_alive():
                return False
            assert restart.error is None, f"restarting {killed.name}: {restart.error!r}"
            return _all_in_sync(survivors, topics.usage_events)

        flow.send_until(rejoined, REJOIN_TIMEOUT_S, "rejoined")
        flow.send(AFTER_REJOIN)
        emitter.flush(timeout_s=120)  # raises DeliveryFailed if the broker refused any
    seconds = {what: round(took, 1) for what, took in flow.timings.items()}
    print(f"{len(flow.sent)} events; leaders {leaders[0]} → {leaders[-1]}; seconds {seconds}")
    # The emitter's delivery reports: every future resolved by the flush, none failed
    delivered = [event for event, future in flow.sent if future.exception(timeout=0) is None]
    assert len(delivered) == len(flow.sent), "events reported not delivered"
    _check_outputs(pipeline, delivered)


def _check_outputs(pipeline: Pipeline, delivered: list[dict[str, Any]]) -> None:
    settings, topics = pipeline.settings, pipeline.topics
    ids = {str(e["event_id"]) for e in delivered}
    assert len(ids) == len(delivered)
    # Then the input topic holds what the emitter reported delivered, each once
    on_topic = Counter(str(r["event_id"]) for r in _read_to_end(settings, topics.usage_events))
    assert set(on_topic) == ids, (
        f"lost {len(ids - set(on_topic))}, unreported {len(set(on_topic) - ids)}"
    )
    assert not [i for i, count in on_topic.items() if count > 1], "a record written twice"

    # …every event is priced, from its one record, and none is dead-lettered
    pipeline.wait_caught_up(timeout_s=120)
    sources: dict[str, set[tuple[int, int]]] = {}
    priced = _read_to_end(settings, topics.usage_priced)
    for record in priced:
        where = (record["source_partition"], record["source_offset"])
        sources.setdefault(record["event"]["event_id"], set()).add(where)
    assert set(sources) == ids
    assert all(len(where) == 1 for where in sources.values()), "an event priced twice"
    print(f"{len(priced) - len(ids)} priced records published again after a replay")
    assert _read_to_end(settings, topics.usage_deadletter) == []

    # …and Redis counted each once: the reference model's spend, org by org
    reference = Reference()
    for org in set(ORGS):
        reference.org(org, "usage_based", "sales_assisted", SEATS, 0)
    for event in delivered:
        reference.usage(event)
    assert len(reference.accepted) == len(delivered)
    for org, month in list(reference.spend):
        assert _redis_spend(pipeline, org, month) == reference.spend_hash(org, month), org
