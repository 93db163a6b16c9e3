"""Pipeline benchmark (`make bench`): what the enforcement worker sustains, how fast a
cap stops a user, how fast the gate answers — and the raw Kafka ceiling beside it.

Method (all on a private namespace with 12 partitions, `bench.harness`, against the
local stack):
1. backlog: N usage events for 200 orgs are emitted first; `metering worker` processes
   (METERING_BENCH_WORKERS, default 1; by default then again, on a fresh backlog, with 2
   workers in one consumer group) are then started and timed until their consumer
   group has committed all of them (events/s sustained, including start-up and group
   join; also the rate after the first commit, and the workers' CPU time per event then,
   which varies far less than rates on shared cores). The CPU per event of the local
   broker and Redis is measured over the same window: with the workers', it bounds what
   this machine sustains with any number of workers;
2. faust alone: the same backlog through the worker's faust app with a processor that
   does nothing (`bench.faust_floor`, its own group): the CPU faust's own per-message
   path costs, a floor under the worker's;
3. raw ceiling: a plain confluent-kafka consumer reads the same topic end to end;
4. event-to-block: while background traffic flows at METERING_BENCH_BACKGROUND_RATE
   events/s (default 5,000), an event that takes a member over their cap is emitted and
   the gate is polled until it says `user_cap_reached` (p50/p90/p99/max over
   METERING_BENCH_BLOCK_TRIALS trials, default 100);
5. gate: sequential `Gate.check` calls (p50/p99, one Redis round trip each).

METERING_BENCH_SUSTAINED_ONLY=1 stops after step 1; METERING_BENCH_PROFILE=<prefix> samples
each worker with py-spy (installed separately) into <prefix>-<n>.txt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from rich.console import Console
from rich.table import Table

from bench import faust_floor
from bench.harness import METERING, Namespace, cpu_seconds, percentile, py_spy, record
from metering import kafka_clients
from metering.emitter import Emitter
from metering.gate import Gate
from metering.settings import Settings
from metering.stack.local import LocalStack
from metering.topics import consumer_lag
from metering.traffic import TrafficGenerator

BACKLOG_EVENTS = int(os.environ.get("METERING_BENCH_EVENTS", "200000"))
PARTITIONS = 12
ORGS = 200
BLOCK_TRIALS = int(os.environ.get("METERING_BENCH_BLOCK_TRIALS", "100"))
BACKGROUND_RATE_PER_S = int(os.environ.get("METERING_BENCH_BACKGROUND_RATE", "5000"))
GATE_CALLS = 5000
WORKERS = int(os.environ.get("METERING_BENCH_WORKERS", "1"))
# Only the sustained run (no raw ceiling, block latency or gate): quicker A/B comparisons.
SUSTAINED_ONLY = os.environ.get("METERING_BENCH_SUSTAINED_ONLY", "") == "1"
# A path prefix: each worker is sampled by `py-spy record` (installed separately) into
# <prefix>-<n>.txt, collapsed stacks.
PROFILE = os.environ.get("METERING_BENCH_PROFILE", "")


def _lag(settings: Settings, group: str | None = None) -> int:
    """usage.events.v1 records not committed by `group` (default: the workers' usage
    hot path)."""
    return consumer_lag(
        settings.kafka_bootstrap, group or settings.usage_group_id, [settings.topics.usage_events]
    )


def _raw_ceiling(settings: Settings, expected: int) -> float:
    consumer = kafka_clients.consumer(
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


async def _gate_answer(gate: Gate, org: str, user: str) -> str | None:
    decision = await gate.check(org, user, "chat_web")
    return decision.reason.value if decision.reason else None


def _background(
    settings: Settings, traffic: TrafficGenerator, stop: threading.Event, sent: list[float]
) -> None:
    """Steady usage at BACKGROUND_RATE_PER_S while the block latency is measured, paced
    by the clock (a sleep per event undershoots at thousands per second). Appends the
    rate achieved to `sent`."""
    with Emitter(settings.kafka_bootstrap, usage_topic=settings.topics.usage_events) as emitter:
        events = enumerate(traffic.usage_events(10**7, timedelta(minutes=1)))
        started, emitted = time.perf_counter(), 0
        while not stop.is_set():
            due = int((time.perf_counter() - started) * BACKGROUND_RATE_PER_S)
            for index, event in itertools.islice(events, max(due - emitted, 0)):
                emitter.emit_usage(
                    {**event, "event_id": f"bg-{index}", "occurred_at": _now()},
                )
                emitted += 1
            time.sleep(0.001)
        sent.append(emitted / (time.perf_counter() - started))


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
            probe.emit_account(  # a seat for the probe member (members fit the seats)
                {
                    "event_id": f"cap-s-{trial}",
                    "type": "seats.added",
                    "org_id": org.org_id,
                    "occurred_at": _now(),
                    "actor": None,
                    "data": {"seat_type": seat, "quantity": 1},
                }
            )
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


def _faust_floor(namespace: Namespace) -> dict[str, Any]:
    """The same backlog through one faust worker that does nothing with it (its own
    consumer group): the CPU faust itself costs per event, a floor under the worker's."""
    started = time.perf_counter()
    floor, process = faust_floor.start(namespace)
    try:
        # faust's app reads with the plain group id (not the usage path's `.usage` one).
        return _sustained(namespace, floor, started, [process.pid], group=floor.group_id)
    finally:
        namespace.stop(process)


def _stack_pids(namespace: Namespace) -> dict[str, list[int]]:
    """The local broker's and Redis's processes, when `metering stack up` started them
    (an external broker or Redis is not measured)."""
    stack = LocalStack(namespace.base)
    return {c.name: [c.pid] for c in stack.status() if c.pid is not None}


def _sustained(
    namespace: Namespace,
    settings: Settings,
    started: float,
    pids: list[int],
    group: str | None = None,
) -> dict[str, Any]:
    """Until the group has committed the whole backlog. Besides the rates, the CPU time
    per event after start-up of the workers, the broker and Redis: on shared cores it
    varies far less than the rate, and their sum bounds what this machine can sustain
    whatever the number of workers (cores ÷ CPU per event)."""
    processes = {"worker": pids, **_stack_pids(namespace)}

    def cpu() -> dict[str, float]:
        return {name: cpu_seconds(group) for name, group in processes.items()}

    first_progress = None  # (when, lag, CPU) at the group's first commit (start-up over)
    while (lag := _lag(settings, group)) > 0:
        if first_progress is None and lag < BACKLOG_EVENTS:
            first_progress = (time.perf_counter(), lag, cpu())
        time.sleep(0.5)
    finished, cpu_end = time.perf_counter(), cpu()
    elapsed = finished - started
    steady = 0.0
    us_per_event = dict.fromkeys(processes, 0.0)
    if first_progress:
        steady = first_progress[1] / (finished - first_progress[0])
        us_per_event = {
            name: (cpu_end[name] - first_progress[2][name]) / first_progress[1] * 1e6
            for name in processes
        }
    total = sum(us_per_event.values())
    cores = os.cpu_count() or 1
    return {
        "workers": len(pids),
        "events": BACKLOG_EVENTS,
        "seconds": round(elapsed, 2),
        "events_per_s": round(BACKLOG_EVENTS / elapsed),
        # After the first commit: without start-up and group join (±0.5 s polling).
        "steady_events_per_s": round(steady),
        "worker_cpu_us_per_event": round(us_per_event["worker"], 1),
        "broker_cpu_us_per_event": round(us_per_event.get("kafka", 0.0), 1),
        "redis_cpu_us_per_event": round(us_per_event.get("redis", 0.0), 1),
        # What all cores could sustain at this CPU per event, workers added at will.
        "cores": cores,
        "cpu_bound_events_per_s": round(cores * 1e6 / total) if total else 0,
    }


def main() -> None:
    with Namespace.create("bench", partitions=PARTITIONS, log="bench-worker.log") as ns:
        results = _measure(ns)
    if results is not None:
        if WORKERS == 1:  # the same backlog again with two workers in one consumer group
            with Namespace.create("bench2", partitions=PARTITIONS, log="bench-worker.log") as ns:
                results["pipeline_two_workers"] = _sustained_run(ns, 2)
        _report(results)


def _sustained_run(ns: Namespace, workers: int) -> dict[str, Any]:
    """The sustained measurement alone, with `workers` workers, on a fresh backlog."""
    traffic = TrafficGenerator(
        seed=98, orgs=ORGS, members_per_org=10, start=datetime.now(UTC) - timedelta(hours=1)
    )
    ns.emit_backlog(traffic, BACKLOG_EVENTS, orgs_applied=True)
    started = time.perf_counter()
    processes = ns.spawn([METERING, "worker"], count=workers, sink_in_worker=False)
    try:
        return _sustained(ns, ns.settings, started, [w.pid for w in processes])
    finally:
        for process in processes:
            ns.stop(process)


def _measure(ns: Namespace) -> dict[str, Any] | None:
    """Every step on the namespace; None if only the sustained rate was asked for."""
    settings = ns.settings
    now = datetime.now(UTC)
    traffic = TrafficGenerator(
        seed=99, orgs=ORGS, members_per_org=10, start=now - timedelta(hours=1)
    )
    ns.emit_backlog(traffic, BACKLOG_EVENTS, orgs_applied=True)
    started = time.perf_counter()
    # The processors alone: the ClickHouse sink has its own benchmark.
    workers = ns.spawn([METERING, "worker"], count=WORKERS, sink_in_worker=False)
    profilers = [
        py_spy(w.pid, f"{PROFILE}-{n}.txt", "--idle", "--threads")
        for n, w in enumerate(workers)
        if PROFILE
    ]
    results: dict[str, Any] = {}
    try:
        results["pipeline"] = _sustained(ns, settings, started, [w.pid for w in workers])
        elapsed = results["pipeline"]["seconds"]
        if SUSTAINED_ONLY:
            print(json.dumps(results["pipeline"]))
            return None
        results["faust_floor"] = _faust_floor(ns)
        raw = _raw_ceiling(settings, BACKLOG_EVENTS)
        results["raw_consumer"] = {
            "messages_per_s": round(raw),
            "pipeline_ratio": round(BACKLOG_EVENTS / elapsed / raw, 3),
        }

        stop, achieved = threading.Event(), list[float]()
        load = threading.Thread(
            target=_background, args=(settings, traffic, stop, achieved), daemon=True
        )
        load.start()
        try:
            latencies = asyncio.run(_block_latency(settings, traffic))
        finally:
            stop.set()
            load.join()
        results["event_to_block"] = {
            "trials": len(latencies),
            "background_rate_per_s": BACKGROUND_RATE_PER_S,
            "background_rate_achieved_per_s": round(achieved[0]) if achieved else None,
            "latency_ms_p50": percentile(latencies, 0.5),
            "latency_ms_p90": percentile(latencies, 0.9),
            "latency_ms_p99": percentile(latencies, 0.99),
            "latency_ms_max": percentile(latencies, 1.0),
            "latencies_ms": [round(v, 1) for v in latencies],
        }
        results["gate"] = asyncio.run(_gate_bench(settings, traffic))
    finally:
        for worker in workers:
            ns.stop(worker)
        for profiler in profilers:
            profiler.wait(timeout=60)
    return results


def _report(results: dict[str, Any]) -> None:
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
        f"{p['events_per_s']:,} events/s ({p['events']:,} events, {p['seconds']} s; "
        f"{p['steady_events_per_s']:,}/s after the first commit)",
    )
    if "pipeline_two_workers" in results:
        two = results["pipeline_two_workers"]
        table.add_row(
            "pipeline sustained, 2 workers",
            f"{two['events_per_s']:,} events/s ({two['steady_events_per_s']:,}/s after the "
            f"first commit); worker {two['worker_cpu_us_per_event']} µs/event",
        )
    table.add_row(
        "CPU per event",
        f"worker {p['worker_cpu_us_per_event']} µs · broker {p['broker_cpu_us_per_event']} µs"
        f" · Redis {p['redis_cpu_us_per_event']} µs → at most "
        f"{p['cpu_bound_events_per_s']:,}/s on {p['cores']} cores",
    )
    f = results["faust_floor"]
    table.add_row(
        "faust alone (a no-op processor)",
        f"{f['steady_events_per_s']:,}/s after the first commit; worker "
        f"{f['worker_cpu_us_per_event']} µs/event → at most {f['cpu_bound_events_per_s']:,}/s "
        f"on {f['cores']} cores",
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
    record("enforcement", results)


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
        "latency_ms_p50": percentile(times, 0.5),
        "latency_ms_p99": percentile(times, 0.99),
        "latency_ms_mean": round(statistics.fmean(times), 3),
    }


if __name__ == "__main__":
    main()
