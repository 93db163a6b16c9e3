"""`metering`: the operator's command."""

from __future__ import annotations

import logging

import typer

from metering.cli import deadletter, stack
from metering.cli.demo import demo
from metering.cli.emit import emit
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


@app.command()
def worker(
    loglevel: str = typer.Option("warning", help="faust log level"),
) -> None:
    """Run the stream processors (account + usage) until stopped."""
    # faust takes a second to import: only this command pays for it.
    from metering.worker import run_worker  # noqa: PLC0415

    run_worker(Settings(), loglevel)


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
