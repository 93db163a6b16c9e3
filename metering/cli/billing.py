"""`billing`: the billing side's command (the nightly batch joins it with the documents)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import typer
from rich.table import Table

from metering.cli.output import console
from metering.settings import Settings
from schemas.money import format_usd

app = typer.Typer(
    help="Prices, and later the documents.", no_args_is_help=True, add_completion=False
)


@app.callback()
def main() -> None:
    """Billing commands."""


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
