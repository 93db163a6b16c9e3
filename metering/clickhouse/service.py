"""Running the sink as a service: `metering sink`, and the child process `metering
worker` starts so one command runs the whole pipeline.

In embedded mode only one process can own the store. A sink that finds it owned waits
as a standby and takes over when the owner exits (e.g. a second worker on the same
machine, or `billing run` holding the store for a while)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from threading import Event

from metering import logs
from metering.clickhouse.sink import ClickHouseSink
from metering.clickhouse.store import Store, StoreInUse
from metering.metrics import serve as serve_metrics
from metering.settings import Settings

log = logging.getLogger("metering.sink")

STANDBY_RETRY_S = 5.0
EXIT_SINK_FAILED = 71
_PR_SET_PDEATHSIG = 1


def open_store_waiting(settings: Settings, stop: Event) -> Store | None:
    """The store, once this process may own it; None if stopped while waiting."""
    announced = False
    while not stop.is_set():
        try:
            return Store(settings.resolved_clickhouse_url)
        except StoreInUse as exc:
            if not announced:
                log.warning("%s; waiting as a standby", exc)
                announced = True
            stop.wait(STANDBY_RETRY_S)
    return None


def serve(settings: Settings, *, once: bool = False, timeout_s: float = 600.0) -> None:
    """Run the sink until SIGTERM/SIGINT (or, with `once`, until it has caught up: then
    a store owned by another process is an error, `StoreInUse`, rather than a wait)."""
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if not once:  # a long-running sink; `--once` ends when caught up
        serve_metrics(settings.metrics_port, "metering sink", settings.metrics_host)
    store = Store(settings.resolved_clickhouse_url) if once else open_store_waiting(settings, stop)
    if store is None:
        return
    try:
        sink = ClickHouseSink(settings, store)
        if once:
            sink.run_until_caught_up(timeout_s)
        else:
            sink.run(stop)
    finally:
        store.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_child(*arguments: str, **env: str) -> subprocess.Popen[bytes]:
    """`metering <arguments>` as a child of this process (same environment, same
    settings, but for the `env` given) that gets SIGTERM when this process dies."""
    command = Path(sys.executable).parent / "metering"
    verbose = ["--verbose"] if logs.verbose() else []  # as this process was asked
    return subprocess.Popen(
        [str(command), *verbose, *arguments],
        preexec_fn=_die_with_parent,  # noqa: PLW1509
        env={**os.environ, **env} if env else None,
    )


def spawn_sink_child(metrics_port: int) -> subprocess.Popen[bytes]:
    """`metering sink`, serving its metrics on `metrics_port` (0: none): not the
    parent's port, which the parent serves."""
    return spawn_child("sink", METERING_METRICS_PORT=str(metrics_port))


def start_sink_thread(settings: Settings, store: Store, stop: Event) -> threading.Thread:
    """The sink on a thread of this process, sharing `store` (whose calls are
    serialised). An unexpected error ends the process: the batch is replayed on restart,
    and a half-alive process would silently stop storing."""

    def run() -> None:
        try:
            ClickHouseSink(settings, store).run(stop)
        except BaseException:
            log.exception("the ClickHouse sink failed; exiting")
            os._exit(EXIT_SINK_FAILED)

    thread = threading.Thread(target=run, name="clickhouse-sink", daemon=True)
    thread.start()
    return thread
