"""`billing`: the billing side's command — the price book, the month-end batch and the
month-to-date preview of documents."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metering import logs
from metering.cli.output import console, fail
from metering.settings import Settings
from schemas.money import format_usd

app = typer.Typer(
    help="Prices and documents: the month-end batch and the month-to-date preview.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="log everything, the Kafka clients' chatter included"),
    ] = False,
) -> None:
    """Billing commands."""
    logs.configure(verbose)


@app.command()
def prices(
    on: Annotated[str | None, typer.Option(help="date YYYY-MM-DD; default: every version")] = None,
) -> None:
    """Show the price book in force (METERING_PRICE_BOOK or the shipped one)."""
    book = Settings().load_price_book()
    day = date.fromisoformat(on) if on else None
    for version in book.versions:
        if day is not None and version is not book.version_on(day):
            continue
        models = Table(
            "model",
            "input",
            "output",
            "cache write",
            "cache read",
            title=f"Token rates from {version.effective_from} (USD per million tokens)",
        )
        for model, rates in version.models.items():
            models.add_row(
                model,
                *(
                    format_usd(r)
                    for r in (rates.input, rates.output, rates.cache_write, rates.cache_read)
                ),
            )
        console.print(models)
        seats = Table(
            "seat",
            "monthly fee",
            "usage included per month",
            title=f"Seat prices from {version.effective_from} (USD per user per month)",
        )
        for seat, price in version.seats.items():
            seats.add_row(
                seat.value, format_usd(price.monthly_fee), format_usd(price.monthly_usage_allowance)
            )
        console.print(seats)


MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"


@app.command()
def run(
    month: Annotated[str, typer.Option(help="the month to bill, YYYY-MM (must have ended)")],
    out: Annotated[
        Path | None,
        typer.Option(help="where to write the files; default $METERING_DOCUMENTS_DIR/MONTH"),
    ] = None,
    org: Annotated[str | None, typer.Option(help="only this org")] = None,
) -> None:
    """Issue the documents of MONTH and write DIR/<document_id>.json (+ .html).

    Idempotent: a second run issues nothing and rewrites identical files."""
    import re  # noqa: PLC0415

    from metering.clickhouse.store import StoreInUse  # noqa: PLC0415
    from metering.documents.batch import BillingBatch, MonthNotClosed  # noqa: PLC0415
    from metering.documents.service import store_with_sink, utc_now  # noqa: PLC0415
    from metering.documents.watermarks import SinkBehind  # noqa: PLC0415

    if not re.match(MONTH, month):
        fail(f"--month must be YYYY-MM, got {month!r}")
    settings = Settings()
    target = out or settings.resolved_documents_dir / month
    try:
        with (
            store_with_sink(settings) as store,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=not console.is_terminal,
            ) as progress,
        ):
            task = progress.add_task(f"billing {month}: orgs", total=None)
            report = BillingBatch(settings, store, clock=utc_now).run(
                month,
                target,
                org_id=org,
                on_org=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (StoreInUse, MonthNotClosed, SinkBehind) as exc:
        fail(str(exc))
    table = Table("document", "kind", "total (USD)", title=f"Documents of {month}")
    for document in report.documents:
        table.add_row(document.document_id, document.kind, f"{document.total_cents / 100:,.2f}")
    console.print(table)
    issued = sum(report.issued.values())
    console.print(
        f"{report.orgs} orgs · {issued} documents issued now "
        f"({', '.join(f'{n} {kind}' for kind, n in sorted(report.issued.items())) or 'none'}) · "
        f"{len(report.documents)} documents of {month} written to {target}"
    )


@app.command()
def preview(
    org: Annotated[str, typer.Option(help="the org")],
) -> None:
    """Print the org's month-to-date draft documents as JSON (R19); nothing is issued."""
    import json  # noqa: PLC0415

    from metering.clickhouse.store import StoreInUse  # noqa: PLC0415
    from metering.documents.batch import BillingBatch  # noqa: PLC0415
    from metering.documents.service import store_with_sink, utc_now  # noqa: PLC0415
    from metering.documents.watermarks import SinkBehind, wait_until_stored  # noqa: PLC0415

    settings = Settings()
    try:
        with store_with_sink(settings) as store:
            marks = wait_until_stored(settings)
            drafts = BillingBatch(settings, store, clock=utc_now).preview(org, marks)
    except (StoreInUse, SinkBehind) as exc:
        fail(str(exc))
    if not drafts:
        fail(f"no org {org!r} in ClickHouse")
    console.print_json(json.dumps([d.model_dump(mode="json") for d in drafts]))
