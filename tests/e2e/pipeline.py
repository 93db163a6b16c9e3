"""A private pipeline for one test: namespaced topics, a Redis key prefix, a consumer
group, and a real `metering worker` process running against them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from billing.enforcement import Decision
from metering import faults
from metering.emitter import Emitter
from metering.gate import Gate, UnknownOrgError
from metering.redis_clients import async_client, sync_client
from metering.settings import Settings
from metering.topics import TopicNames, admin_client, consumer_lag, ensure_topics, groups_lag
from schemas.account import ACCOUNT_EVENT_ADAPTER, AccountOutcome
from schemas.validation import encode_event
from tests.e2e import faulty

PARTITIONS = 4


@dataclass
class Pipeline:
    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    sink: bool = False  # whether workers run the ClickHouse sink (a child process)
    _seen: dict[str, list[Any]] = field(default_factory=dict)
    _consumer: Consumer | None = None

    @property
    def topics(self) -> TopicNames:
        return self.settings.topics

    def env(self) -> dict[str, str]:
        return self.settings.model_copy(update={"sink_in_worker": self.sink}).environment()

    def create_topics(self) -> None:
        ensure_topics(admin_client(self.settings.kafka_bootstrap), PARTITIONS, self.topics.specs())

    # -- the worker ------------------------------------------------------------
    def spawn_worker(self) -> subprocess.Popen[bytes]:
        """Another worker process in the same consumer group (the caller owns it)."""
        return self.spawn("worker")

    def spawn(self, *command: str, **env: str) -> subprocess.Popen[bytes]:
        """A `metering …` process on this pipeline's settings, logging to its log file."""
        return self._launch([str(Path(sys.executable).parent / "metering"), *command], env)

    def spawn_crashing(
        self, point: faults.Point, times: int, *command: str, **env: str
    ) -> subprocess.Popen[bytes]:
        """`spawn`, but the process exits with `faulty.EXIT_FAULT_INJECTED` the `times`-th
        time it reaches `point` (tests/e2e/faulty.py)."""
        crashing = faulty.command(point, times, "metering", *command)
        return self._launch(crashing, {**env, **faulty.environment()})

    def _launch(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.log_path.open("ab")
        return subprocess.Popen(
            argv, env={**os.environ, **self.env(), **env}, stdout=log, stderr=subprocess.STDOUT
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.process = self.spawn_worker()
        return self.process

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # -- input -------------------------------------------------------------------
    def emitter(self, now: datetime | None = None) -> Emitter:
        clock = (lambda: now) if now else (lambda: datetime.now(UTC))
        return Emitter(
            self.settings.kafka_bootstrap,
            usage_topic=self.topics.usage_events,
            account_topic=self.topics.account_events,
            clock=clock,
        )

    def send_accounts(self, *events: dict[str, Any]) -> None:
        """Emit account events and wait until the broker has them."""
        with self.emitter() as emit:
            for event in events:
                emit.emit_account(event)

    def send_outcomes(self, *events: dict[str, Any]) -> None:
        """What the account processor would publish for `events` if it accepted them all
        (partition 0, offsets in order): input for a ClickHouse sink run on its own."""
        now = datetime.now(UTC)
        values = [
            encode_event(
                AccountOutcome(
                    event=ACCOUNT_EVENT_ADAPTER.validate_python(event),
                    status="accepted",
                    reason="",
                    plan=None,
                    billing_mode=None,
                    received_at=now,
                    source_partition=0,
                    source_offset=offset,
                )
            )
            for offset, event in enumerate(events)
        ]
        self.send_raw(self.topics.account_outcomes, values, events[0]["org_id"].encode())

    def send_usage(self, *events: dict[str, Any]) -> None:
        """Emit usage events and wait until the broker has them."""
        with self.emitter() as emit:
            for event in events:
                emit.emit_usage(event)

    def send_raw(self, topic: str, values: list[bytes], key: bytes = b"org") -> None:
        producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap})
        for value in values:
            producer.produce(topic, value=value, key=key)
        assert producer.flush(30) == 0

    # -- output ------------------------------------------------------------------
    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
            self._consumer.subscribe(
                [
                    self.topics.usage_priced,
                    self.topics.usage_deadletter,
                    self.topics.notifications,
                    self.topics.documents,
                    self.topics.notification_deliveries,
                    self.topics.notification_deadletter,
                ]
            )
        return self._consumer

    def outputs(self, topic: str) -> list[Any]:
        """Everything read so far from an output topic (JSON-decoded)."""
        return self._seen.get(topic, [])

    def wait_for(self, predicate: Any, timeout_s: float = 60.0, what: str = "") -> None:
        """Read output topics until `predicate(self)` holds."""
        deadline = time.monotonic() + timeout_s
        reader = self._reader()
        while not predicate(self):
            if time.monotonic() > deadline:
                counts = {t: len(v) for t, v in self._seen.items()}
                raise AssertionError(f"timed out waiting for {what or predicate}; seen {counts}")
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode}; see {self.log_path}"
                )
            for message in reader.consume(num_messages=1000, timeout=0.2):
                if message.error():
                    raise KafkaException(message.error())
                value = message.value()
                assert value is not None
                self._seen.setdefault(message.topic() or "", []).append(json.loads(value))

    def lag(self) -> int:
        """Input records not yet committed by the worker's consumer group."""
        return groups_lag(self.settings.kafka_bootstrap, self.settings.worker_inputs())

    def sink_lag(self) -> int:
        """Records the ClickHouse sink has not committed yet."""
        return consumer_lag(
            self.settings.kafka_bootstrap,
            self.settings.sink_group_id,
            list(self.settings.sink_inputs()),
        )

    def wait_caught_up(self, timeout_s: float = 300.0) -> None:
        """Until the worker (and its sink, if it runs one) has committed every record."""
        deadline = time.monotonic() + timeout_s
        while (lag := self.lag() + (self.sink_lag() if self.sink else 0)) > 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker still {lag} records behind; see {self.log_path}")
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}")
            time.sleep(0.5)

    def priced(self) -> list[Any]:
        return self.outputs(self.topics.usage_priced)

    def dead(self) -> list[Any]:
        return self.outputs(self.topics.usage_deadletter)

    def notifications(self) -> list[Any]:
        return self.outputs(self.topics.notifications)

    def deliveries(self) -> list[Any]:
        """The notifier's delivery records (attempts and scheduled retries)."""
        return self.outputs(self.topics.notification_deliveries)

    def delivery_dead_letters(self) -> list[Any]:
        return self.outputs(self.topics.notification_deadletter)

    def documents(self) -> dict[str, Any]:
        """The documents published so far (seat invoices, monthly documents), by id."""
        records = self.outputs(self.topics.documents)
        return {r["document"]["document_id"]: r["document"] for r in records}

    def gate(
        self, org_id: str, user_id: str, surface: str = "chat_web", at: datetime | None = None
    ) -> str | None:
        """The gate's answer now (or at `at`): None if allowed, else the reason."""
        clock = (lambda: at) if at else (lambda: datetime.now(UTC))

        async def check() -> Decision:
            client = async_client(self.settings)
            try:
                gate = Gate(
                    client,
                    self.settings.load_price_book(),
                    clock,
                    self.settings.redis_prefix,
                )
                return await gate.check(org_id, user_id, surface)
            finally:
                await client.aclose()

        try:
            decision = asyncio.run(check())
        except UnknownOrgError:
            return "(unknown org)"
        return decision.reason.value if decision.reason else None

    def wait_for_gate(
        self,
        org_id: str,
        user_id: str,
        expected: str | None,
        surface: str = "chat_web",
        timeout_s: float = 30.0,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while (answer := self.gate(org_id, user_id, surface)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"gate says {answer!r}, expected {expected!r}")
            time.sleep(0.1)

    def close(self) -> None:
        self.stop_worker()
        if self._consumer is not None:
            self._consumer.close()


def new_pipeline(base: Settings, log_dir: Path, *, create_topics: bool = True) -> Pipeline:
    tag = uuid.uuid4().hex[:10]
    settings = base.model_copy(
        update={
            "topic_namespace": f"t{tag}.",
            "redis_prefix": f"t{tag}:",
            "group_id": f"metering-test-{tag}",
            "clickhouse_url": f"chdb://{log_dir / f'clickhouse-{tag}'}",
            "sink_group_id": f"metering-sink-test-{tag}",
        }
    )
    pipeline = Pipeline(settings, log_dir / f"worker-{tag}.log")
    if create_topics:
        pipeline.create_topics()
    return pipeline


def cleanup(pipeline: Pipeline) -> None:
    pipeline.close()
    client = sync_client(pipeline.settings)
    keys = list(client.scan_iter(match=f"{pipeline.settings.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    admin = admin_client(pipeline.settings.kafka_bootstrap)
    futures = admin.delete_topics([spec.name for spec in pipeline.topics.specs()])
    for future in futures.values():
        try:
            future.result(timeout=30)  # wait: an admin client dropped early sends nothing
        except KafkaException as exc:  # a test that never got as far as creating them
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
