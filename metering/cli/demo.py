"""`metering demo`: a month-to-date of sample traffic through the running pipeline.

Starts the stack if needed and a `metering worker`, emits account events (orgs of every
plan × billing mode, credits, caps) and month-to-date usage through the emitter SDK,
waits until the worker has applied everything, then shows what it decided: topic counts,
and the gate's answer for every member (who is blocked, and why). Running it twice
re-sends the same events: they are recognised as duplicates and counted once.
The ClickHouse projection, the HTTP API and the month-end documents join with their issues.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import Consumer, TopicPartition
from redis.asyncio import Redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metering.cli.dashboard import spend_table
from metering.cli.output import console, fail
from metering.clickhouse import queries
from metering.clickhouse.store import Store
from metering.emitter import Emitter
from metering.gate import Gate
from metering.settings import Settings
from metering.stack.local import LocalStack
from metering.stack.process import StackError
from metering.topics import admin_client, consumer_lag
from metering.traffic import TrafficGenerator
from schemas.usage import Surface

CATCH_UP_TIMEOUT_S = 300


def _topic_sizes(settings: Settings) -> dict[str, int]:
    """Messages on each topic: sum over partitions of high − low watermark."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "metering-demo-sizes"}
    )
    try:
        metadata = admin_client(settings.kafka_bootstrap).list_topics(timeout=10).topics
        sizes = {}
        for spec in settings.topics.specs():
            total = 0
            for partition in metadata[spec.name].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(spec.name, partition), timeout=10
                )
                total += high - low
            sizes[spec.name] = total
        return sizes
    finally:
        consumer.close()


def _lag(settings: Settings) -> int:
    """Records the processors, then the ClickHouse sink, have not committed yet."""
    topics, bootstrap = settings.topics, settings.kafka_bootstrap
    processors = [topics.account_events, topics.usage_events]
    sink = [topics.usage_priced, topics.account_events]
    return consumer_lag(bootstrap, settings.group_id, processors) + consumer_lag(
        bootstrap, settings.sink_group_id, sink
    )


def _wait_caught_up(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    with console.status("worker applying events…") as status:
        while (lag := _lag(settings)) > 0:
            if worker.poll() is not None:
                fail(f"the worker exited ({worker.returncode}); see var/demo/worker.log")
            if time.monotonic() > deadline:
                fail(f"the worker is still {lag:,} events behind after {CATCH_UP_TIMEOUT_S} s")
            status.update(f"worker applying events… {lag:,} to go")
            time.sleep(0.5)


async def _decisions(settings: Settings, traffic: TrafficGenerator) -> Counter[str]:
    client = Redis.from_url(settings.redis_url)
    gate = Gate(
        client, settings.load_price_book(), lambda: datetime.now(UTC), settings.redis_prefix
    )
    answers: Counter[str] = Counter()
    try:
        for org in traffic.orgs:
            for user in org.members:
                decision = await gate.check(org.org_id, user, Surface.CHAT_WEB)
                answers[decision.reason.value if decision.reason else "allowed"] += 1
    finally:
        await client.aclose()
    return answers


def demo(
    orgs: Annotated[int, typer.Option(help="organizations to simulate")] = 24,
    members: Annotated[int, typer.Option(help="members per organization")] = 8,
    events: Annotated[int, typer.Option(help="usage events, month to date")] = 20_000,
    seed: Annotated[int, typer.Option(help="traffic seed; same seed, same events")] = 7,
) -> None:
    """Start the stack and a worker, emit month-to-date traffic, show the decisions."""
    settings = Settings()
    try:
        with console.status("starting the local stack…"):
            LocalStack(settings).up()
    except StackError as exc:
        fail(str(exc))
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    span = max(now - timedelta(minutes=1) - month_start, timedelta(seconds=1))
    traffic = TrafficGenerator(seed, orgs, members, month_start)
    log_dir = settings.var_dir / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "metering"), "worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with Emitter(settings.kafka_bootstrap) as emitter:
            for event in traffic.account_events():
                emitter.emit_account(event)
        _wait_caught_up(settings, worker)
        with (
            Emitter(settings.kafka_bootstrap) as emitter,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            task = progress.add_task(f"usage events ({month_start:%B %Y} to date)", total=events)
            # Ids are unique per run: a second run is more usage, not a replay.
            for raw in traffic.usage_events(events, span, id_prefix=f"demo{now:%Y%m%d%H%M%S}"):
                emitter.emit_usage(raw)
                progress.advance(task)
        _wait_caught_up(settings, worker)
        answers = asyncio.run(_decisions(settings, traffic))
    finally:
        worker.terminate()
        worker.wait(timeout=60)

    sizes = Table("topic", "messages", title="Kafka after the demo")
    for name, size in _topic_sizes(settings).items():
        sizes.add_row(name, f"{size:,}")
    console.print(sizes)
    gate = Table("gate answer (chat_web)", "members", title="Who may make a request now")
    for answer, count in answers.most_common():
        gate.add_row(answer, str(count))
    console.print(gate)
    with Store(settings.resolved_clickhouse_url) as store:  # the worker has released it
        month = now.strftime("%Y-%m")
        console.print(
            spend_table(
                f"Top spenders in ClickHouse, {month}", "org", queries.top_spenders(store, month, 5)
            )
        )
    console.print(
        f"{len(traffic.orgs)} orgs × {members} members, {events:,} usage events; worker log "
        f"{log_dir / 'worker.log'}. More: `metering dashboard [--org ORG]`. The HTTP API and "
        "documents come next."
    )
