"""`metering dashboard`: the ops dashboard's questions, answered in the terminal from
ClickHouse (and Redis for live caps and status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from billing.rounding import dollars_and_cents
from metering.cli.output import console, fail
from metering.clickhouse import queries
from metering.clickhouse.board import MemberStatus, read_member_board
from metering.clickhouse.migrations import migrate
from metering.clickhouse.store import Store, StoreInUse
from metering.settings import Settings
from schemas.money import format_usd


def _status(member: MemberStatus) -> str:
    if member.allowed is None:
        return "no enforcement state"
    return "active" if member.allowed else f"[red]blocked: {member.reason}[/]"


def usd(amount_nano_usd: int, exact: bool) -> str:
    """Dollars and cents (rounded half away from zero, for display), or the exact figure."""
    return format_usd(amount_nano_usd) if exact else dollars_and_cents(amount_nano_usd)


def spend_table(title: str, key: str, spends: list[queries.Spend], exact: bool = False) -> Table:
    table = Table(key, "events", "list price (USD)", "billed (USD)", title=title)
    for spend in spends:
        table.add_row(
            spend.key,
            f"{spend.events:,}",
            usd(spend.cost_nano_usd, exact),
            usd(spend.billed_nano_usd, exact),
        )
    return table


def dashboard(
    org: Annotated[
        str | None, typer.Option(help="one org's members, models, surfaces, days")
    ] = None,
    month: Annotated[str | None, typer.Option(help="YYYY-MM; default: this month (UTC)")] = None,
    top: Annotated[int, typer.Option(help="how many orgs in the top-spenders table")] = 10,
    exact: Annotated[
        bool, typer.Option(help="exact amounts (to the nano-dollar) instead of dollars and cents")
    ] = False,
) -> None:
    """Month-to-date usage from ClickHouse. In embedded mode the store has one owner:
    stop `metering worker`/`run` first (or use a ClickHouse server)."""
    settings = Settings()
    month = month or datetime.now(UTC).strftime("%Y-%m")
    try:
        queries.month_bounds(month)
    except ValueError:
        fail(f"--month must be YYYY-MM, not {month!r}")
    try:
        store = Store(settings.resolved_clickhouse_url)
    except StoreInUse as exc:
        fail(str(exc))
    with store:
        migrate(store)
        if org is None:
            console.print(
                spend_table(
                    f"Top spenders, {month}",
                    "org",
                    queries.top_spenders(store, month, top),
                    exact,
                )
            )
            lag = queries.ingestion_lag(store, datetime.now(UTC) - timedelta(minutes=15))
            console.print(
                f"ingestion lag, last 15 min: {lag.events:,} events, p50 {lag.p50_ms:,.0f} ms, "
                f"p99 {lag.p99_ms:,.0f} ms, max {lag.max_ms:,.0f} ms"
            )
            return
        members = Table(
            "member", "events", "billed (USD)", "cap (USD)", "status", title=f"{org}, {month}"
        )
        for member in read_member_board(settings, store, org, month):
            members.add_row(
                member.user_id,
                f"{member.events:,}",
                usd(member.billed_nano_usd, exact),
                "unlimited" if member.cap_nano_usd is None else usd(member.cap_nano_usd, exact),
                _status(member),
            )
        console.print(members)
        for title, key, read in (
            ("By model", "model", queries.model_spend),
            ("By surface", "surface", queries.surface_spend),
            ("By day", "day", queries.daily_spend),
        ):
            console.print(spend_table(title, key, read(store, org, month), exact))
