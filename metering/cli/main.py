"""`metering`: the operator's command."""

from __future__ import annotations

import logging

import typer

from metering import logs
from metering.cli import deadletter, notifier, stack, token
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
app.add_typer(token.app, name="token")
app.command("login-link")(token.login_link)
app.add_typer(notifier.app, name="notifier")
app.command()(emit)
app.command()(demo)
app.command()(rebuild)
app.command()(dashboard)


LOGLEVEL_HELP = "faust's log level (default: warning; info with -v)"


def _faust_loglevel(given: str | None) -> str:
    return given or ("info" if logs.verbose() else "warning")


@app.command()
def worker(
    loglevel: str | None = typer.Option(None, help=LOGLEVEL_HELP),
) -> None:
    """Run the stream processors (account + usage) until stopped."""
    # faust takes a second to import: only this command pays for it.
    from metering.worker import run_worker  # noqa: PLC0415

    run_worker(Settings(), _faust_loglevel(loglevel))


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
def api(
    port: int | None = typer.Option(None, help="default METERING_HTTP_PORT (8080)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    with_sink: bool = typer.Option(
        False,
        "--with-sink",
        help="also run the ClickHouse sink and the nightly billing batch in this process",
    ),
) -> None:
    """Serve the HTTP API (gate, usage, owner controls, Usage page) until stopped."""
    import threading  # noqa: PLC0415

    from metering.api.app import create_api  # noqa: PLC0415
    from metering.api.server import serve  # noqa: PLC0415
    from metering.api.tokens import load_secret  # noqa: PLC0415
    from metering.clickhouse.service import start_sink_thread  # noqa: PLC0415
    from metering.clickhouse.store import Store, StoreInUse  # noqa: PLC0415

    settings = Settings()
    try:
        load_secret(settings.api_secret, settings.var_dir)  # a weak secret: refuse to start
    except ValueError as exc:
        fail(str(exc))
    try:
        store: Store | None = Store(settings.resolved_clickhouse_url)
    except StoreInUse as exc:
        if with_sink:
            fail(str(exc))
        logging.getLogger("metering.api").warning("%s; the Usage page shows no chart", exc)
        store = None
    stop = threading.Event()
    sink = start_sink_thread(settings, store, stop) if with_sink and store else None
    if sink is not None and store is not None and settings.billing_schedule:
        from metering.documents.schedule import start_nightly_billing  # noqa: PLC0415

        start_nightly_billing(settings, store, stop)
    try:
        serve(create_api(settings, store=store), settings, host, port or settings.http_port)
    finally:
        stop.set()
        if sink is not None:
            sink.join(timeout=30)
        if store is not None:
            store.close()


@app.command()
def run(
    loglevel: str | None = typer.Option(None, help=LOGLEVEL_HELP),
) -> None:
    """All-in-one: the stream processors (this process) and, in child processes, the
    HTTP API with the ClickHouse sink and the nightly billing batch (one owner for an
    embedded store), and the notifier. A child that dies is restarted, with back-off,
    and logged."""
    from metering.api.tokens import load_secret  # noqa: PLC0415
    from metering.cli.supervisor import Supervisor  # noqa: PLC0415
    from metering.worker import run_worker  # noqa: PLC0415

    settings = Settings()
    try:  # the API child would refuse it, again and again: say so once, here
        load_secret(settings.api_secret, settings.var_dir)
    except ValueError as exc:
        fail(str(exc))
    api_child = Supervisor(
        "api", "api", "--with-sink", backoff_s=settings.child_restart_backoff_s
    ).start()
    notifier_child = Supervisor(
        "notifier", "notifier", backoff_s=settings.child_restart_backoff_s
    ).start()
    try:
        run_worker(settings.model_copy(update={"sink_in_worker": False}), _faust_loglevel(loglevel))
    finally:
        notifier_child.stop()
        api_child.stop()


@app.callback()
def main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="log everything, the Kafka clients' chatter included"
    ),
) -> None:
    logs.configure(verbose)
