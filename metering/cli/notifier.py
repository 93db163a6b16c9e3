"""`metering notifier`: deliver notifications (webhooks, email); its dead letters."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer
from rich.table import Table

from metering import logs
from metering.cli.output import console
from metering.settings import Settings

app = typer.Typer(
    help="Deliver notifications to people: signed webhooks and email (until stopped); "
    "`redrive` and `summary` for the deliveries given up.",
)


@app.callback(invoke_without_command=True)
def notifier(
    context: typer.Context,
    loglevel: Annotated[
        str | None, typer.Option(help="faust's log level (default: warning; info with -v)")
    ] = None,
) -> None:
    """Run the notifier (billing.notifications.v1 → webhooks and email) until stopped."""
    if context.invoked_subcommand is not None:
        return
    from metering.notify.notifier import run_notifier  # noqa: PLC0415 - faust is slow to import

    run_notifier(Settings(), loglevel or ("info" if logs.verbose() else "warning"))


@app.command()
def summary() -> None:
    """Count the deliveries given up (dead letters) by channel and reason."""
    from metering.notify.redrive import dead_letters  # noqa: PLC0415

    counts: Counter[tuple[str, str]] = Counter()
    for _partition, _offset, letter in dead_letters(Settings()):
        counts[(letter.delivery.channel.value, letter.reason.value)] += 1
    table = Table("channel", "reason", "dead letters")
    for (channel, reason), count in sorted(counts.items()):
        table.add_row(channel, reason, f"{count:,}")
    console.print(table)


@app.command()
def redrive(
    reason: Annotated[
        list[str] | None,
        typer.Option("--reason", help="only letters with this reason (repeatable; default all)"),
    ] = None,
    org: Annotated[str | None, typer.Option(help="only this org's letters")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only")] = False,
) -> None:
    """Deliver dead-lettered notifications again (same webhook-id), e.g. once the
    receiver is fixed; re-driving a letter twice delivers it once more, not twice."""
    from metering.notify.redrive import redrive as run_redrive  # noqa: PLC0415

    report = run_redrive(Settings(), set(reason or ()), org, dry_run)
    verb = "would re-drive" if dry_run else "re-drove"
    console.print(
        f"scanned {report.scanned:,} dead letters; {verb} {sum(report.redriven.values()):,}"
    )
    for name, count in sorted(report.redriven.items()):
        console.print(f"  {name}: {count:,}")
