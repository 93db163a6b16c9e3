"""The usage path's Redis work on one server and on a Redis Cluster, side by side.

Method: the same EVENTS usage events (ORGS usage-based, sales-assisted orgs of MEMBERS
members, created by the real account processor) go through the real usage processor
(`UsageProcessor.process`: validation, pricing, the Lua script, in batches of BATCH
records) twice per ROUNDS, alternately:
- against the stack's Redis (one server, a private prefix);
- against a private local Redis Cluster (3 primaries + 3 replicas, AOF on, started here
  the way `metering stack up --redis-cluster` starts one, on free ports, and stopped at
  the end), through redis-py's cluster client.
Each run gets a fresh prefix, so every event is new. Printed per run: events/s, this
process's CPU per event and Redis's CPU per event (the server's process; on the cluster
the three primaries' and the three replicas'). In-process: no Kafka on this path, so
the numbers are the Redis side of the hot path alone. The single-server mode also
overlaps Redis with the next batch's preparation in the worker (`SentScriptCalls`); this
loop does not, so the difference here is the cluster's own cost.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import cpu_seconds, record, scratch
from bench.marks import MEMBERS, org_events
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.records import SourceRecord
from metering.enforcement.usage_processor import UsageProcessor
from metering.redis_clients import async_client, sync_client
from metering.settings import Settings
from metering.stack.local import REDIS_CLUSTER, LocalStack
from metering.stack.process import read_pid
from metering.stack.redis_cluster import BUS_PORT_OFFSET, CLUSTER_SIZE
from metering.stack.redis_server import MAIN_MARKER
from metering.topics import DEFAULT_TOPICS

ORGS = 40
EVENTS = 100_000
BATCH = 5_000
ROUNDS = 2
SEED = 15


def _free_base_port() -> int:
    """Six free ports and their cluster-bus ports (+10000), below the ephemeral range."""
    for _ in range(500):
        base = random.randrange(21000, 22700)
        ports = [
            p + extra for p in range(base, base + CLUSTER_SIZE) for extra in (0, BUS_PORT_OFFSET)
        ]
        try:
            for port in ports:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for a Redis Cluster")


def _records(values: list[bytes], keys: list[str], first_offset: int) -> list[SourceRecord]:
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    topic = DEFAULT_TOPICS.usage_events
    return [
        SourceRecord(topic, 0, first_offset + n, key.encode(), value, stamp)
        for n, (key, value) in enumerate(zip(keys, values, strict=True))
    ]


def _create_orgs(settings: Settings, orgs: list[str]) -> None:
    now = datetime.now(UTC)
    events = [e for org in orgs for e in org_events(org, now)]
    stamp = int(now.timestamp() * 1000)
    batch = [
        SourceRecord(
            DEFAULT_TOPICS.account_events, 0, n, e["org_id"].encode(), json.dumps(e).encode(), stamp
        )
        for n, e in enumerate(events)
    ]

    async def apply() -> None:
        client = async_client(settings)
        try:
            processor = AccountProcessor(
                client, settings.load_price_book(), settings.redis_prefix, DEFAULT_TOPICS
            )
            result = await processor.process(batch)
            if result.accepted != len(events):
                raise RuntimeError(f"orgs not created: {result.dead_letter_reasons}")
        finally:
            await client.aclose()

    asyncio.run(apply())


def _usage(orgs: list[str]) -> list[tuple[bytes, str]]:
    rng = random.Random(SEED)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = []
    for n in range(EVENTS):
        org = orgs[rng.randrange(ORGS)]
        event = {
            "event_id": f"bench-{n}",
            "org_id": org,
            "user_id": f"u{rng.randrange(MEMBERS)}",
            "surface": "chat_web",
            "model": "claude-haiku-4-5",
            "input_tokens": 100,
            "output_tokens": 200,
            "occurred_at": now,
        }
        out.append((json.dumps(event, separators=(",", ":")).encode(), org))
    return out


def _run(
    settings: Settings, redis_pids: list[int], usage: list[tuple[bytes, str]]
) -> dict[str, Any]:
    settings = settings.model_copy(update={"redis_prefix": f"bench-rc-{uuid.uuid4().hex[:8]}:"})
    orgs = sorted({org for _, org in usage})
    _create_orgs(settings, orgs)
    client = sync_client(settings)
    try:
        processor = UsageProcessor(
            client, settings.load_price_book(), settings.redis_prefix, DEFAULT_TOPICS
        )
        redis_before, own_before, started = (
            cpu_seconds(redis_pids),
            time.process_time(),
            time.perf_counter(),
        )
        for first in range(0, len(usage), BATCH):
            chunk = usage[first : first + BATCH]
            result = processor.process(
                _records([v for v, _ in chunk], [k for _, k in chunk], first)
            )
            if result.accepted != len(chunk):
                raise RuntimeError(f"refused: {dict(result.dead_letter_reasons)}")
        elapsed = time.perf_counter() - started
        own = time.process_time() - own_before
        redis_cpu = cpu_seconds(redis_pids) - redis_before
        keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=5000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()
    return {
        "events_per_s": round(len(usage) / elapsed),
        "worker_us_per_event": round(own / len(usage) * 1e6, 1),
        "redis_us_per_event": round(redis_cpu / len(usage) * 1e6, 1),
    }


def main() -> None:
    console = Console()
    single = Settings()
    single_pid = read_pid(single.var_dir / "redis" / "redis.pid", MAIN_MARKER)
    if single_pid is None:
        raise SystemExit("the stack's Redis is not running (metering stack up)")
    usage = _usage([f"org{n:02d}" for n in range(ORGS)])
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "cluster": []}
    with scratch("bench-redis-cluster") as directory:
        base = _free_base_port()
        cluster = Settings(
            var_dir=Path(directory), redis_url=f"redis://127.0.0.1:{base}/0", redis_cluster=True
        )
        stack = LocalStack(cluster)
        try:
            with console.status("starting a local Redis Cluster…"):
                stack.up_redis()
            cluster_pids = [
                p for node in stack.redis_cluster.nodes if (p := node.pid()) is not None
            ]
            for round_ in range(ROUNDS):
                for name, settings, pids in (
                    ("single", single, [single_pid]),
                    ("cluster", cluster, cluster_pids),
                ):
                    with console.status(f"round {round_ + 1}: {name}…"):
                        runs[name].append(_run(settings, pids, usage))
        finally:
            stack.down(frozenset({REDIS_CLUSTER}))
    table = Table("Redis", "events/s", "worker µs/event", "Redis µs/event (all nodes)")
    for name, results in runs.items():
        for r in results:
            table.add_row(
                name,
                f"{r['events_per_s']:,}",
                str(r["worker_us_per_event"]),
                str(r["redis_us_per_event"]),
            )
    console.print(table)
    record(
        "redis_cluster",
        {"events": EVENTS, "orgs": ORGS, "batch": BATCH, "runs": runs},
    )


if __name__ == "__main__":
    main()
