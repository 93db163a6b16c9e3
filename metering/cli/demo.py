"""`metering demo`: drive a month of sample traffic onto the local stack.

For now (event spine) this emits a realistic month of account and usage events through
the emitter SDK and shows what landed on each topic; the stream processors, ClickHouse
and the month-end documents join the demo as they are built.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from confluent_kafka import Consumer, TopicPartition
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from billing.pricing import cost_nano_usd
from metering.cli.output import console, fail
from metering.emitter import Emitter
from metering.settings import Settings
from metering.stack.local import LocalStack
from metering.stack.process import StackError
from metering.topics import TOPICS, admin_client
from metering.traffic import TrafficGenerator
from schemas.money import format_usd
from schemas.usage import UsageEvent


def _previous_month_start(now: datetime) -> datetime:
    first_of_this = datetime(now.year, now.month, 1, tzinfo=UTC)
    last_month_day = first_of_this - timedelta(days=1)
    return datetime(last_month_day.year, last_month_day.month, 1, tzinfo=UTC)


def _topic_sizes(bootstrap: str) -> dict[str, int]:
    """Messages on each topic: sum over partitions of high − low watermark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "metering-demo-sizes"})
    try:
        metadata = admin_client(bootstrap).list_topics(timeout=10).topics
        sizes = {}
        for spec in TOPICS:
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


def demo(
    orgs: Annotated[int, typer.Option(help="organizations to simulate")] = 24,
    members: Annotated[int, typer.Option(help="members per organization")] = 8,
    events: Annotated[int, typer.Option(help="usage events over the month")] = 20_000,
    seed: Annotated[int, typer.Option(help="traffic seed; same seed, same events")] = 7,
) -> None:
    """Start the stack if needed and emit a month of realistic traffic."""
    settings = Settings()
    try:
        with console.status("starting the local stack…"):
            LocalStack(settings).up()
    except StackError as exc:
        fail(str(exc))
    start = _previous_month_start(datetime.now(UTC))
    next_month = _previous_month_start(start + timedelta(days=62))
    traffic = TrafficGenerator(seed, orgs, members, start)
    book = settings.load_price_book()
    spend_by_org: Counter[str] = Counter()
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
        account = list(traffic.account_events())
        task = progress.add_task("account events", total=len(account))
        for event in account:
            emitter.emit_account(event)
            progress.advance(task)
        task = progress.add_task(f"usage events ({start:%Y-%m})", total=events)
        for raw in traffic.usage_events(events, next_month - start):
            emitter.emit_usage(raw)
            usage = UsageEvent.model_validate(raw)
            spend_by_org[usage.org_id] += cost_nano_usd(usage, book)
            progress.advance(task)
    sizes = _topic_sizes(settings.kafka_bootstrap)
    table = Table("topic", "messages on topic", title="Kafka after the demo")
    for name, size in sizes.items():
        table.add_row(name, f"{size:,}")
    console.print(table)
    top = Table(
        "org",
        "plan",
        "billing mode",
        "usage at list price (USD)",
        title=f"Top orgs, {start:%B %Y} (priced client-side from the price book)",
    )
    profiles = {org.org_id: org for org in traffic.orgs}
    for org_id, spend in spend_by_org.most_common(5):
        org = profiles[org_id]
        top.add_row(org_id, org.plan.value, org.billing_mode.value, format_usd(spend))
    console.print(top)
    console.print(
        f"emitted {len(account)} account and {events:,} usage events; "
        "stream processing, ClickHouse and documents come with the next issues."
    )
