"""Pipeline benchmark (`make bench`): what the enforcement worker sustains, how fast a
cap stops a user, how fast the gate answers — and the raw Kafka ceiling beside it.

Method (all on a private topic namespace with 12 partitions, against the local stack):
1. backlog: N usage events for 200 orgs are emitted first; one `metering worker` is then
   started and timed until its consumer group has committed all of them (events/s
   sustained, including start-up and group join);
2. raw ceiling: a plain confluent-kafka consumer reads the same topic end to end;
3. event-to-block: while background traffic flows at a fixed rate, an event that takes
   a member over their cap is emitted and the gate is polled until it says
   `user_cap_reached` (p50/p99 over many trials);
4. gate: sequential `Gate.check` calls (p50/p99, one Redis round trip each).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer
from redis.asyncio import Redis as AsyncRedis
from rich.console import Console
from rich.table import Table

from metering.emitter import Emitter
from metering.gate import Gate
from metering.settings import Settings
from metering.topics import admin_client, consumer_lag, ensure_topics
from metering.traffic import TrafficGenerator

BACKLOG_EVENTS = int(os.environ.get("METERING_BENCH_EVENTS", "200000"))
PARTITIONS = 12
ORGS = 200
BLOCK_TRIALS = int(os.environ.get("METERING_BENCH_BLOCK_TRIALS", "40"))
BACKGROUND_RATE_PER_S = 2000
GATE_CALLS = 5000
WORKERS = int(os.environ.get("METERING_BENCH_WORKERS", "1"))
RESULTS = Path(__file__).parent / "results.json"


def _pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def _settings() -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings().model_copy(
        update={
            "topic_namespace": f"bench{tag}.",
            "redis_prefix": f"bench{tag}:",
            "group_id": f"metering-bench-{tag}",
        }
    )


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "METERING_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "METERING_REDIS_URL": settings.redis_url,
        "METERING_TOPIC_NAMESPACE": settings.topic_namespace,
        "METERING_REDIS_PREFIX": settings.redis_prefix,
        "METERING_GROUP_ID": settings.group_id,
        # The processors alone: the ClickHouse sink has its own benchmark.
        "METERING_SINK_IN_WORKER": "false",
    }


def _lag(settings: Settings) -> int:
    return consumer_lag(settings.kafka_bootstrap, settings.group_id, [settings.topics.usage_events])


def _raw_ceiling(settings: Settings, expected: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topics.usage_events])
    seen, started = 0, None
    while seen < expected:
        batch = consumer.consume(num_messages=10_000, timeout=1.0)
        if batch and started is None:
            started = time.perf_counter()
        seen += sum(1 for m in batch if not m.error())
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return seen / elapsed


def _accounts(traffic: TrafficGenerator) -> list[dict[str, Any]]:
    events = list(traffic.account_events())
    for org in traffic.orgs:  # enough credits that nobody stops during the backlog
        events.append(
            {
                "event_id": f"bench-credit-{org.org_id}",
                "type": "credits.purchased",
                "org_id": org.org_id,
                "occurred_at": traffic.start.isoformat(),
                "actor": None,
                "data": {"purchase_id": f"bench-{org.org_id}", "amount": "1000000.00"},
            }
        )
    return events


async def _gate_answer(gate: Gate, org: str, user: str) -> str | None:
    decision = await gate.check(org, user, "chat_web")
    return decision.reason.value if decision.reason else None


def _background(settings: Settings, traffic: TrafficGenerator, stop: threading.Event) -> None:
    """Steady usage at BACKGROUND_RATE_PER_S while the block latency is measured."""
    with Emitter(settings.kafka_bootstrap, usage_topic=settings.topics.usage_events) as emitter:
        for index, event in enumerate(traffic.usage_events(10**7, timedelta(minutes=1))):
            if stop.is_set():
                break
            emitter.emit_usage(
                {**event, "event_id": f"bg-{index}", "occurred_at": datetime.now(UTC).isoformat()}
            )
            time.sleep(1 / BACKGROUND_RATE_PER_S)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _block_latency(settings: Settings, traffic: TrafficGenerator) -> list[float]:
    """Emit an event that takes a fresh member over a 0.01 cap; time until the gate
    refuses them."""
    client = AsyncRedis.from_url(settings.redis_url)
    gate = Gate(
        client, settings.load_price_book(), lambda: datetime.now(UTC), settings.redis_prefix
    )
    topics = settings.topics
    latencies = []
    with Emitter(
        settings.kafka_bootstrap,
        usage_topic=topics.usage_events,
        account_topic=topics.account_events,
    ) as probe:
        # Orgs without an org cap (the generator caps every third), so only the probe's
        # own cap can block the probe member.
        uncapped = [org for index, org in enumerate(traffic.orgs) if index % 3]
        for trial in range(BLOCK_TRIALS):
            org = uncapped[trial % len(uncapped)]
            user = f"cap-{trial}"
            seat = "enterprise" if org.plan.value == "usage_based" else "standard"
            probe.emit_account(
                {
                    "event_id": f"cap-m-{trial}",
                    "type": "member.added",
                    "org_id": org.org_id,
                    "occurred_at": _now(),
                    "actor": None,
                    "data": {"user_id": user, "role": "member", "seat_type": seat},
                }
            )
            probe.emit_account(
                {
                    "event_id": f"cap-c-{trial}",
                    "type": "spend_cap.set",
                    "org_id": org.org_id,
                    "occurred_at": _now(),
                    "actor": None,
                    "data": {"user_id": user, "limit": "0.01"},
                }
            )
            probe.flush()
            ready = time.perf_counter()
            while (answer := await _gate_answer(gate, org.org_id, user)) is not None:
                if time.perf_counter() - ready > 30:
                    raise RuntimeError(f"{org.org_id}/{user} never allowed: {answer}")
                await asyncio.sleep(0.01)
            sent = time.perf_counter()
            # 1M input + 1M output tokens of Opus 4.1: 90.00, beyond a standard seat's 25.00.
            probe.emit_usage(
                {
                    "event_id": f"cap-u-{trial}",
                    "org_id": org.org_id,
                    "user_id": user,
                    "surface": "chat_web",
                    "model": "claude-opus-4-1",
                    "input_tokens": 1_000_000,
                    "output_tokens": 1_000_000,
                    "occurred_at": _now(),
                }
            )
            probe.flush()
            waited = time.perf_counter()
            while await _gate_answer(gate, org.org_id, user) is None:
                if time.perf_counter() - waited > 10:
                    base = f"{settings.redis_prefix}{{{org.org_id}}}"
                    debug = {
                        "spend": await client.hgetall(f"{base}:spend:{datetime.now(UTC):%Y-%m}"),
                        "caps": await client.hgetall(f"{base}:caps"),
                        "members": await client.hget(f"{base}:members", user),
                        "lag": _lag(settings),
                    }
                    raise RuntimeError(f"trial {trial}: {org.org_id}/{user} never blocked {debug}")
                await asyncio.sleep(0.002)
            latencies.append((time.perf_counter() - sent) * 1000)
    await client.aclose()
    return latencies


def main() -> None:
    settings = _settings()
    ensure_topics(admin_client(settings.kafka_bootstrap), PARTITIONS, settings.topics.specs())
    now = datetime.now(UTC)
    traffic = TrafficGenerator(
        seed=99, orgs=ORGS, members_per_org=10, start=now - timedelta(hours=1)
    )
    emitter = Emitter(
        settings.kafka_bootstrap,
        usage_topic=settings.topics.usage_events,
        account_topic=settings.topics.account_events,
    )
    for event in _accounts(traffic):
        emitter.emit_account(event)
    for event in traffic.usage_events(BACKLOG_EVENTS, timedelta(minutes=50)):
        emitter.emit_usage(event)
    emitter.flush()
    started = time.perf_counter()
    with Path("var/bench-worker.log").open("ab") as log:
        workers = [
            subprocess.Popen(
                [str(Path(sys.executable).parent / "metering"), "worker"],
                env=_env(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for _ in range(WORKERS)
        ]
    results: dict[str, Any] = {}
    try:
        while _lag(settings) > 0:
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        results["pipeline"] = {
            "workers": WORKERS,
            "events": BACKLOG_EVENTS,
            "seconds": round(elapsed, 2),
            "events_per_s": round(BACKLOG_EVENTS / elapsed),
        }
        raw = _raw_ceiling(settings, BACKLOG_EVENTS)
        results["raw_consumer"] = {
            "messages_per_s": round(raw),
            "pipeline_ratio": round(BACKLOG_EVENTS / elapsed / raw, 3),
        }

        stop = threading.Event()
        load = threading.Thread(target=_background, args=(settings, traffic, stop), daemon=True)
        load.start()
        try:
            latencies = asyncio.run(_block_latency(settings, traffic))
        finally:
            stop.set()
            load.join()
        results["event_to_block"] = {
            "trials": len(latencies),
            "background_rate_per_s": BACKGROUND_RATE_PER_S,
            "latency_ms_p50": _pct(latencies, 0.5),
            "latency_ms_p99": _pct(latencies, 0.99),
        }
        results["gate"] = asyncio.run(_gate_bench(settings, traffic))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        _cleanup(settings)

    table = Table(
        "benchmark", "result", title=f"Enforcement pipeline ({WORKERS} worker(s), 12 partitions)"
    )
    p, r, b, g = (
        results["pipeline"],
        results["raw_consumer"],
        results["event_to_block"],
        results["gate"],
    )
    table.add_row(
        "pipeline sustained",
        f"{p['events_per_s']:,} events/s ({p['events']:,} events, {p['seconds']} s)",
    )
    table.add_row(
        "raw consumer ceiling",
        f"{r['messages_per_s']:,} msg/s — pipeline at {r['pipeline_ratio']:.1%}",
    )
    table.add_row(
        f"event → block at {b['background_rate_per_s']:,}/s",
        f"p50 {b['latency_ms_p50']} ms · p99 {b['latency_ms_p99']} ms ({b['trials']} trials)",
    )
    table.add_row(
        "gate (Python API)", f"p50 {g['latency_ms_p50']} ms · p99 {g['latency_ms_p99']} ms"
    )
    Console().print(table)
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing["enforcement"] = {**results, "measured_at": datetime.now(UTC).isoformat()}
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")


async def _gate_bench(settings: Settings, traffic: TrafficGenerator) -> dict[str, float]:
    client = AsyncRedis.from_url(settings.redis_url)
    gate = Gate(
        client, settings.load_price_book(), lambda: datetime.now(UTC), settings.redis_prefix
    )
    times = []
    for index in range(GATE_CALLS):
        org = traffic.orgs[index % ORGS]
        begin = time.perf_counter()
        await gate.check(org.org_id, org.members[index % 10], "chat_web")
        times.append((time.perf_counter() - begin) * 1000)
    await client.aclose()
    return {
        "calls": GATE_CALLS,
        "latency_ms_p50": _pct(times, 0.5),
        "latency_ms_p99": _pct(times, 0.99),
        "latency_ms_mean": round(statistics.fmean(times), 3),
    }


def _cleanup(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=5000))
    for start in range(0, len(keys), 5000):
        client.delete(*keys[start : start + 5000])
    admin = admin_client(settings.kafka_bootstrap)  # kept alive until the futures resolve
    futures = admin.delete_topics([s.name for s in settings.topics.specs()])
    for future in futures.values():
        future.result(timeout=30)


if __name__ == "__main__":
    main()
