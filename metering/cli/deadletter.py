"""`metering deadletter …`: inspect and re-drive rejected input."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer
from rich.table import Table

from metering.cli.output import console, fail
from metering.enforcement.rebuild import read_topic
from metering.enforcement.redrive import redrive as run_redrive
from metering.settings import Settings
from schemas.outputs import DeadLetter

app = typer.Typer(help="Dead-lettered input: counts by reason, re-drive once fixed.")


@app.command()
def summary() -> None:
    """Count the dead letters by source topic and reason."""
    settings = Settings()
    counts: Counter[tuple[str, str]] = Counter()
    for batch in read_topic(settings.kafka_bootstrap, settings.topics.usage_deadletter):
        for record in batch:
            letter = DeadLetter.model_validate_json(record.value or b"{}")
            counts[(letter.source_topic, letter.reason)] += 1
    table = Table("source topic", "reason", "dead letters")
    for (topic, reason), count in sorted(counts.items()):
        table.add_row(topic, reason, f"{count:,}")
    console.print(table)


@app.command()
def redrive(
    reason: Annotated[
        list[str], typer.Option("--reason", help="re-drive letters with this reason (repeatable)")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only")] = False,
) -> None:
    """Send dead letters with the given reasons back to their source topic."""
    if not reason:
        fail("name at least one --reason (e.g. --reason unknown_org)")
    report = run_redrive(Settings(), set(reason), dry_run)
    verb = "would re-drive" if dry_run else "re-drove"
    console.print(
        f"scanned {report.scanned:,} dead letters; {verb} {sum(report.redriven.values()):,}"
    )
    for name, count in sorted(report.redriven.items()):
        console.print(f"  {name}: {count:,}")
