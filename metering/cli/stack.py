"""`metering stack up | down | status`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError
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


def _settings(**overrides: Any) -> Settings:
    """The settings, with an invalid combination reported as one line (not a traceback)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        fail("; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors()))


@app.command()
def up(
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="a local Redis Cluster instead of one Redis: six nodes (3 primaries + 3 "
            "replicas, AOF) at METERING_REDIS_URL's port and the five above; the same as "
            "METERING_REDIS_CLUSTER=true",
        ),
    ] = False,
) -> None:
    """Start Kafka and Redis unless they already answer, then create missing topics.

    With --redis-cluster (or METERING_REDIS_CLUSTER=true), Redis is a local Redis Cluster
    of six nodes at METERING_REDIS_URL's port and the five above, formed on the first start
    (`redis-cli --cluster create`); `down` and `status` find its nodes without the flag."""
    settings = _settings(redis_cluster=True) if redis_cluster else _settings()
    try:
        with console.status("starting the local stack…"):
            components, topics = LocalStack(settings).up()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(components))
    console.print(_topics_table(topics))


@app.command()
def down() -> None:
    """Stop what `up` started (data under var/ is kept), Redis Cluster nodes included."""
    try:
        rows = LocalStack(_settings()).down()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))


@app.command()
def status() -> None:
    """Show each component, its state and endpoint. Exit code 1 if Kafka or Redis is down."""
    try:
        rows = LocalStack(_settings()).status()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))
    if any(row.state is State.DOWN for row in rows):
        raise typer.Exit(1)
