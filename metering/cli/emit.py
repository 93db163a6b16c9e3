"""`metering emit FILE.jsonl`: send a file of events through the emitter SDK."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metering.cli.output import console, fail
from metering.emitter import DeliveryFailed, Emitter
from metering.settings import Settings
from metering.topics import ACCOUNT_EVENTS, USAGE_EVENTS
from schemas.validation import InvalidEvent

MAX_REJECTIONS_SHOWN = 10


def emit(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="one JSON event per line")
    ],
    account: Annotated[
        bool, typer.Option("--account", help="the file holds account events")
    ] = False,
    usage_topic: Annotated[
        str | None,
        typer.Option(help=f"topic for usage events; default {USAGE_EVENTS} (namespaced)"),
    ] = None,
    account_topic: Annotated[
        str | None,
        typer.Option(help=f"topic for account events; default {ACCOUNT_EVENTS} (namespaced)"),
    ] = None,
) -> None:
    """Validate and send each line; invalid lines are reported (line, reason) and skipped.

    Exit code 0 if every line was sent and delivered, 1 otherwise.
    """
    settings = Settings()
    lines = file.read_bytes().splitlines()
    rejected: Counter[str] = Counter()
    shown = 0
    emitter = Emitter(
        settings.kafka_bootstrap,
        usage_topic=usage_topic or settings.topics.usage_events,
        account_topic=account_topic or settings.topics.account_events,
    )
    send = emitter.emit_account if account else emitter.emit_usage
    with Progress(
        TextColumn("[bold]emitting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("emit", total=len(lines))
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    send(line)
                except InvalidEvent as exc:
                    rejected[exc.reason.value] += 1
                    if shown < MAX_REJECTIONS_SHOWN:
                        progress.console.print(
                            f"line {number}: [red]{exc.reason.value}[/] {exc.detail}"
                        )
                        shown += 1
            progress.advance(task)
        try:
            emitter.flush()
            failed = 0
        except DeliveryFailed as exc:
            failed = len(exc.errors)
            progress.console.print(f"[red]{exc}[/]")
    table = Table("sent", "delivered", "rejected", "failed", title=str(file))
    table.add_row(
        str(emitter.delivered + failed),
        str(emitter.delivered),
        str(sum(rejected.values())),
        str(failed),
    )
    console.print(table)
    for reason, count in sorted(rejected.items()):
        console.print(f"  rejected {reason}: {count}")
    if rejected or failed:
        raise typer.Exit(1)
    if not lines:
        fail(f"{file} is empty")
