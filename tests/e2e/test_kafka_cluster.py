"""A 3-broker Kafka cluster that loses a broker while usage flows (issue 15, item 3).

`LocalStack` with `kafka_brokers=3` starts three KRaft nodes of this test's own (each a
broker and a controller voter, small heaps); the topics get three replicas and
`min.insync.replicas=2`. A worker prices usage from three orgs while the emitter sends
it; a quarter of the way in, the leader of the busiest partition is SIGKILLed, and started
again 15 s later, once another broker leads its partitions (checked). Then:
- every record the emitter reported delivered is on the input topic exactly once, and
  no record is there that it did not report (the idempotent producer's retries);
- every delivered event is priced (by event_id) and none is dead-lettered: accepted +
  dead-lettered = produced;
- the Redis counters equal the reference: each org's spend is the sum of its events.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin._config import ConfigResource  # untyped in .admin

from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import month_of
from metering.settings import Settings
from metering.stack.kafka_broker import NODE_PORT_STEP
from metering.stack.local import LocalStack
from metering.topics import admin_client
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import new_org, spend

pytestmark = pytest.mark.stack

ORGS = {"org_big": 0.6, "org_mid": 0.3, "org_small": 0.1}  # share of the usage
EVENTS = 6_000
# Longer than the controller's broker session timeout (9 s): its partitions get new
# leaders while the flow goes on, before the broker comes back
RESTART_AFTER_S = 15.0
PAUSE_S = 0.005  # between two events: 6,000 take about 35 s
USD = 10**9


def _cluster_ports() -> int:
    """A base port such that the three nodes' ports (base + 10 n, and + 1) are free."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        ports = [base + NODE_PORT_STEP * n + extra for n in range(3) for extra in (0, 1)]
        if max(ports) > 65535:
            continue
        try:
            for port in ports[1:]:
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for three brokers")


@pytest.fixture
def cluster(stack: RunningStack, tmp_path: Path) -> Iterator[LocalStack]:
    base = _cluster_ports()
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=",".join(f"127.0.0.1:{base + NODE_PORT_STEP * n}" for n in range(3)),
        kafka_brokers=3,
        kafka_heap="256m",
        redis_url=stack.settings.redis_url,  # the session's Redis
        topic_partitions=1,  # the default topics `up` creates are not used here
    )
    local = LocalStack(settings)
    try:
        local.up()
        yield local
    finally:
        local.down(frozenset({"kafka"}))


def _replication(settings: Settings, topic: str) -> tuple[set[int], str]:
    admin = admin_client(settings.kafka_bootstrap)
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    replicas = {len(p.replicas) for p in metadata.partitions.values()}
    resource = ConfigResource("topic", topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    return replicas, configs["min.insync.replicas"].value


def _input_records(settings: Settings, topic: str) -> list[dict[str, object]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in metadata.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                if message.error():
                    continue
                found.append(json.loads(message.value() or b""))
                partition, offset = message.partition(), message.offset()
                if partition in ends and offset is not None and offset + 1 >= ends[partition]:
                    del ends[partition]
        assert not ends, f"could not read the input topic to its end: {ends}"
        return found
    finally:
        consumer.close()


def test_losing_the_busiest_leader_loses_and_doubles_nothing(
    cluster: LocalStack, tmp_path: Path
) -> None:
    pipeline: Pipeline = new_pipeline(cluster.settings, tmp_path)
    try:
        topics = pipeline.topics
        assert _replication(pipeline.settings, topics.usage_events) == ({3}, "2")
        assert _replication(pipeline.settings, topics.usage_priced) == ({3}, "2")
        pipeline.send_accounts(
            *(
                e
                for org in ORGS
                for e in new_org(org, mode="sales_assisted", members=("u1", "u2"), credits=None)
            )
        )
        pipeline.start_worker()

        orgs = [org for org, share in ORGS.items() for _ in range(int(share * 10))]
        events = [spend(orgs[n % len(orgs)], f"u{1 + n % 2}", 1 + n % 3) for n in range(EVENTS)]
        futures: list[tuple[dict[str, object], Future[Message]]] = []
        killed_node, killed_at = None, 0.0
        leaders_after: set[int] = set()  # the partition's leaders seen after the kill
        partition = -1  # the busiest org's
        restart = threading.Thread(target=cluster.up)  # starts the killed node, waits for all
        with pipeline.emitter() as emitter:
            for n, event in enumerate(events):
                futures.append((event, emitter.emit_usage(event)))
                if n == EVENTS // 4:
                    emitter.flush()
                    # The busiest org's partition, and the node that leads it
                    big = next(f for e, f in futures if e["org_id"] == "org_big")
                    partition = big.result().partition() or 0
                    admin = admin_client(pipeline.settings.kafka_bootstrap)
                    topic = admin.list_topics(topics.usage_events, timeout=10).topics[
                        topics.usage_events
                    ]
                    leader = topic.partitions[partition].leader
                    killed_node = cluster.kafka_nodes[leader - 1]
                    pid = cluster.node_pid(killed_node)
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                if killed_at and n % 200 == 0:
                    leaders_after.add(
                        admin.list_topics(topics.usage_events, timeout=10)
                        .topics[topics.usage_events]
                        .partitions[partition]
                        .leader
                    )
                if (
                    killed_at
                    and restart.ident is None
                    and time.monotonic() - killed_at >= RESTART_AFTER_S
                ):
                    restart.start()
                time.sleep(PAUSE_S)  # a flow, not a burst: the failover happens mid-stream
            emitter.flush(timeout_s=120)
        assert killed_node is not None
        assert restart.ident is not None, "the flow ended before the broker came back"
        # Another broker led the partition while events still flowed: a real failover
        assert leaders_after - {killed_node.node_id, -1}, leaders_after
        restart.join(timeout=120)
        assert len(cluster.settings.kafka_bootstrap.split(",")) == 3
        delivered: list[dict[str, object]] = []
        failed: list[dict[str, object]] = []
        for event, future in futures:
            (failed if future.exception(timeout=0) else delivered).append(event)
        assert not failed, f"{len(failed)} events not delivered"

        records = _input_records(pipeline.settings, topics.usage_events)
        on_topic = Counter(str(r["event_id"]) for r in records)
        assert set(on_topic) == {str(e["event_id"]) for e in delivered}, "lost or unreported"
        assert max(on_topic.values()) == 1, "a record written twice"

        pipeline.wait_caught_up(timeout_s=300)

        def priced(p: Pipeline) -> set[str]:
            return {str(r["event"]["event_id"]) for r in p.priced()}

        pipeline.wait_for(lambda p: priced(p) >= set(on_topic), 120, "every event priced")
        assert priced(pipeline) == set(on_topic)
        assert pipeline.dead() == []

        client = redis.Redis.from_url(pipeline.settings.redis_url)
        try:
            for org in ORGS:
                expected: Counter[str] = Counter()
                for e in delivered:
                    if e["org_id"] == org:
                        expected[month_of_event(e)] += int(str(e["output_tokens"])) // 200_000
                for month, usd in expected.items():
                    keys = OrgKeys(pipeline.settings.redis_prefix, org)
                    spent = int(client.hget(keys.spend(month), "org") or 0)
                    assert spent == usd * USD, (org, month)
        finally:
            client.close()
    finally:
        cleanup(pipeline)


def month_of_event(event: dict[str, object]) -> str:
    return month_of(datetime.fromisoformat(str(event["occurred_at"])))
