"""`metering stack up | down | status`."""

from __future__ import annotations

import typer
from rich.table import Table

from metering.cli.output import console, fail
from metering.settings import Settings
from metering.stack.local import ComponentStatus, LocalStack, State
from metering.stack.process import StackError
from metering.topics import TopicState

app = typer.Typer(help="Local Kafka + Redis (+ embedded ClickHouse) for development and tests.")

_STYLE = {
    State.STARTED: "green",
    State.RUNNING: "green",
    State.EXTERNAL: "cyan",
    State.STOPPED: "yellow",
    State.DOWN: "red",
    State.EMBEDDED: "cyan",
}


def _components_table(rows: list[ComponentStatus]) -> Table:
    table = Table("component", "state", "endpoint", "pid", "detail")
    for row in rows:
        table.add_row(
            row.name,
            f"[{_STYLE[row.state]}]{row.state.value}[/]",
            row.endpoint,
            str(row.pid or ""),
            row.detail,
        )
    return table


def _topics_table(topics: list[TopicState]) -> Table:
    table = Table("topic", "partitions", "")
    for topic in topics:
        table.add_row(topic.name, str(topic.partitions), "created" if topic.created else "exists")
    return table


@app.command()
def up() -> None:
    """Start Kafka and Redis unless they already answer, then create missing topics."""
    try:
        with console.status("starting the local stack…"):
            components, topics = LocalStack(Settings()).up()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(components))
    console.print(_topics_table(topics))


@app.command()
def down() -> None:
    """Stop what `up` started (data under var/ is kept)."""
    try:
        rows = LocalStack(Settings()).down()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))


@app.command()
def status() -> None:
    """Show each component, its state and endpoint. Exit code 1 if Kafka or Redis is down."""
    try:
        rows = LocalStack(Settings()).status()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))
    if any(row.state is State.DOWN for row in rows):
        raise typer.Exit(1)
