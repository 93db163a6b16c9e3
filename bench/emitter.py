"""Emitter benchmark (`make bench`): events/s and delivery latency against the local broker.

Two runs on a fresh 12-partition usage topic (a private namespace, `bench.harness`):
- throughput: N pre-generated events emitted as fast as the SDK takes them (validation,
  serialisation, idempotent produce, acks=all), timed from the first emit to the end of
  `flush()`;
- latency: a paced run at a fixed rate, each event timed from `emit_usage` to its
  delivery callback (broker ack), reported as p50/p99/max.
Results are printed and written to bench/results.json (section "emitter").
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Message
from rich.console import Console
from rich.table import Table

from bench.harness import Namespace, percentile, record
from metering.emitter import Emitter
from metering.traffic import TrafficGenerator

THROUGHPUT_EVENTS = 200_000
PACED_RATE_PER_S = 5_000
PACED_SECONDS = 4
PARTITIONS = 12


def _events(count: int, seed: int) -> list[dict[str, Any]]:
    start = datetime.now(UTC) - timedelta(days=1)
    return list(TrafficGenerator(seed, 50, 10, start).usage_events(count, timedelta(hours=12)))


def throughput(bootstrap: str, topic: str) -> dict[str, float]:
    events = _events(THROUGHPUT_EVENTS, seed=1)
    started = time.perf_counter()
    with Emitter(bootstrap, usage_topic=topic) as emitter:
        for event in events:
            emitter.emit_usage(event)
    elapsed = time.perf_counter() - started
    return {
        "events": len(events),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(events) / elapsed),
    }


def _record_latency(into: list[float], sent_at: float) -> Callable[[Future[Message]], None]:
    def record(_: Future[Message]) -> None:
        into.append((time.perf_counter() - sent_at) * 1000)

    return record


def paced_latency(bootstrap: str, topic: str) -> dict[str, float]:
    events = _events(PACED_RATE_PER_S * PACED_SECONDS, seed=2)
    latencies_ms: list[float] = []
    interval = 1.0 / PACED_RATE_PER_S
    with Emitter(bootstrap, usage_topic=topic) as emitter:
        # Warm-up: the first send waits for metadata and the idempotent producer id; that
        # is start-up cost, not the steady-state latency measured here.
        emitter.emit_usage(events[0])
        emitter.flush()
        events = events[1:]
        begin = time.perf_counter()
        for index, event in enumerate(events):
            due = begin + index * interval
            while (now := time.perf_counter()) < due:
                emitter.poll(min(due - now, 0.001))
            sent_at = time.perf_counter()
            emitter.emit_usage(event).add_done_callback(_record_latency(latencies_ms, sent_at))
    return {
        "rate_per_s": PACED_RATE_PER_S,
        "events": len(latencies_ms),
        "latency_ms_p50": percentile(latencies_ms, 0.50),
        "latency_ms_p99": percentile(latencies_ms, 0.99),
        "latency_ms_max": round(max(latencies_ms), 2),
        "latency_ms_mean": round(statistics.fmean(latencies_ms), 2),
    }


def main() -> None:
    with Namespace.create("benchemitter", partitions=PARTITIONS, log="bench-emitter.log") as ns:
        bootstrap, topic = ns.settings.kafka_bootstrap, ns.topics.usage_events
        results = {
            "throughput": throughput(bootstrap, topic),
            "paced": paced_latency(bootstrap, topic),
        }
    table = Table("benchmark", "result", title="Emitter → local Kafka (acks=all, idempotent)")
    t, p = results["throughput"], results["paced"]
    table.add_row("emitter throughput", f"{t['events_per_s']:,} events/s ({t['events']:,} events)")
    table.add_row(
        f"delivery latency at {p['rate_per_s']:,}/s",
        f"p50 {p['latency_ms_p50']} ms · p99 {p['latency_ms_p99']} ms "
        f"· max {p['latency_ms_max']} ms",
    )
    Console().print(table)
    record("emitter", results)


if __name__ == "__main__":
    main()
