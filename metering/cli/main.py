"""`metering`: the operator's command."""

from __future__ import annotations

import logging

import typer

from metering.cli import deadletter, stack
from metering.cli.dashboard import dashboard
from metering.cli.demo import demo
from metering.cli.emit import emit
from metering.cli.output import fail
from metering.cli.rebuild import rebuild
from metering.settings import Settings

app = typer.Typer(
    help="Usage metering and billing pipeline.", no_args_is_help=True, add_completion=False
)
app.add_typer(stack.app, name="stack")
app.add_typer(deadletter.app, name="deadletter")
app.command()(emit)
app.command()(demo)
app.command()(rebuild)
app.command()(dashboard)


@app.command()
def worker(
    loglevel: str = typer.Option("warning", help="faust log level"),
) -> None:
    """Run the stream processors (account + usage) until stopped."""
    # faust takes a second to import: only this command pays for it.
    from metering.worker import run_worker  # noqa: PLC0415

    run_worker(Settings(), loglevel)


@app.command()
def sink(
    once: bool = typer.Option(False, "--once", help="stop when caught up instead of running on"),
) -> None:
    """Run the ClickHouse sink (usage.priced.v1 and account.events.v1 → ClickHouse).

    `metering worker` already runs one; use this for a sink on its own (e.g. a worker
    with METERING_SINK_IN_WORKER=false), or `--once` to bring ClickHouse up to date."""
    from metering.clickhouse.service import serve  # noqa: PLC0415
    from metering.clickhouse.store import StoreInUse  # noqa: PLC0415

    try:
        serve(Settings(), once=once)
    except StoreInUse as exc:
        fail(str(exc))


@app.command()
def run(
    loglevel: str = typer.Option("warning", help="faust log level"),
) -> None:
    """All-in-one. Today: the stream processors (as `metering worker`); the HTTP API and
    the nightly batch join it with their issues."""
    from metering.worker import run_worker  # noqa: PLC0415

    run_worker(Settings(), loglevel)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log client chatter")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR)
