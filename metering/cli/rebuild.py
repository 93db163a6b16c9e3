"""`metering rebuild`: restore Redis from Kafka."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from metering.cli.output import console
from metering.enforcement.rebuild import rebuild as run_rebuild
from metering.redis_clients import sync_client
from metering.settings import Settings


def _flush(settings: Settings) -> int:
    """Delete the projection's keys: the whole keyspace of a prefix, or FLUSHDB."""
    client = sync_client(settings)
    try:
        if not settings.redis_prefix:
            count = int(client.dbsize())
            client.flushdb()
            return count
        keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start : start + 5000])
        return len(keys)
    finally:
        client.close()


def rebuild(
    flush: Annotated[
        bool, typer.Option("--flush", help="delete the Redis projection first")
    ] = False,
) -> None:
    """Rebuild the Redis projection (caps, balances, spend) from Kafka. Stop workers first."""
    settings = Settings()
    if flush:
        console.print(f"deleted {_flush(settings):,} keys")
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def tick(stage: str, count: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=None)
            progress.advance(tasks[stage], count)

        report = asyncio.run(run_rebuild(settings, tick, flushed=flush))
    console.print(
        f"replayed {report.account_events:,} account events, {report.priced_events:,} priced "
        f"events ({report.usage_applied:,} applied), "
        f"{report.notification_marks:,} notification marks"
    )
