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


BrokersOption = Annotated[
    int | None,
    typer.Option(
        "--kafka-brokers",
        help="run this many Kafka brokers (1, or 3 for a cluster that survives losing one: "
        "KRaft nodes at the bootstrap port + 10 × (n − 1), three replicas per partition, "
        "min.insync.replicas=2); default METERING_KAFKA_BROKERS",
    ),
]


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
    kafka_brokers: BrokersOption = None,
) -> None:
    """Start Kafka and Redis unless they already answer, then create missing topics.

    With --redis-cluster (or METERING_REDIS_CLUSTER=true), Redis is a local Redis Cluster
    of six nodes at METERING_REDIS_URL's port and the five above, formed on the first start
    (`redis-cli --cluster create`); `down` and `status` find its nodes without the flag.

    With --kafka-brokers 3 (or METERING_KAFKA_BROKERS=3), Kafka is three KRaft nodes, each
    a broker and a controller voter; a node that is down is started again."""
    overrides: dict[str, Any] = {"redis_cluster": True} if redis_cluster else {}
    if kafka_brokers is not None:
        overrides["kafka_brokers"] = kafka_brokers
    settings = _settings(**overrides)
    try:
        with console.status("starting the local stack…"):
            components, topics = LocalStack(settings).up()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(components))
    console.print(_topics_table(topics))


@app.command()
def down() -> None:
    """Stop what `up` started (data under var/ is kept), Redis Cluster nodes and every
    broker of a Kafka cluster included."""
    try:
        rows = LocalStack(_settings()).down()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))


@app.command()
def status(kafka_brokers: BrokersOption = None) -> None:
    """Show each component, its state and endpoint. Exit code 1 if Kafka or Redis is down."""
    settings = _settings() if kafka_brokers is None else _settings(kafka_brokers=kafka_brokers)
    try:
        rows = LocalStack(settings).status()
    except StackError as exc:
        fail(str(exc))
    console.print(_components_table(rows))
    if any(row.state is State.DOWN for row in rows):
        raise typer.Exit(1)
