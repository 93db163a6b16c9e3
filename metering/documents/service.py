"""Running the batch from a command: own the store, bring ClickHouse up to date with an
in-process sink, issue, stop the sink. (Inside `metering run` the API process already
owns the store and runs the sink; the nightly schedule calls the batch directly.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from threading import Event

from metering.clickhouse.migrations import migrate
from metering.clickhouse.service import start_sink_thread
from metering.clickhouse.store import Store
from metering.settings import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def store_with_sink(settings: Settings) -> Iterator[Store]:
    """The store (raises `StoreInUse` if another process owns an embedded one) with a
    sink storing everything on the topics until the block ends."""
    store = Store(settings.resolved_clickhouse_url)
    stop = Event()
    try:
        # The sink migrates the store too, but on its own thread: a batch on a store
        # nothing has written to yet would query tables that do not exist yet.
        migrate(store)
        thread = start_sink_thread(settings, store, stop)
        try:
            yield store
        finally:
            stop.set()
            thread.join(timeout=60)
    finally:
        store.close()
