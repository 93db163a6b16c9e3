"""`metering stack up | down | status`."""

from __future__ import annotations

from typing import Annotated

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


def _settings(kafka_brokers: int | None) -> Settings:
    return Settings() if kafka_brokers is None else Settings(kafka_brokers=kafka_brokers)


BrokersOption = Annotated[
    int | None,
    typer.Option(
        "--kafka-brokers",
        help="run this many Kafka brokers (1, or 3 for a cluster that survives losing "
        "one); default METERING_KAFKA_BROKERS",
    ),
]


@app.command()
def up(kafka_brokers: BrokersOption = None) -> None:
    """Start Kafka and Redis unless they already answer, then create missing topics."""
    try:
        with console.status("starting the local stack…"):
            components, topics = LocalStack(_settings(kafka_brokers)).up()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(components))
    console.print(_topics_table(topics))


@app.command()
def down() -> None:
    """Stop what `up` started, every broker of a cluster included (data under var/ is
    kept)."""
    try:
        rows = LocalStack(Settings()).down()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))


@app.command()
def status(kafka_brokers: BrokersOption = None) -> None:
    """Show each component, its state and endpoint. Exit code 1 if Kafka or Redis is down."""
    try:
        rows = LocalStack(_settings(kafka_brokers)).status()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))
    if any(row.state is State.DOWN for row in rows):
        raise typer.Exit(1)
