"""Connect to ClickHouse by URL: `chdb:///path` (embedded, in-process) or `http(s)://…`.

An embedded store belongs to one process at a time (chDB locks its directory). We take
our own lock first (an `flock` on `<path>.owner`, released by the kernel when the owner
dies, even by SIGKILL) so a second process gets a clear error naming the owner's PID
instead of chDB's "Error initializing EmbeddedServer".
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "metering"

# Values inlined into one `IN %(…)s` list. ClickHouse refuses queries longer than
# max_query_size (256 KiB by default); 2,000 ids of ~40 characters stay well under it
# without asking a production server to raise a limit.
IN_LIST_SIZE = 2_000


def in_batches(values: Sequence[str], size: int = IN_LIST_SIZE) -> Iterator[list[str]]:
    """`values` in slices short enough for one inline `IN` list each."""
    for first in range(0, len(values), size):
        yield list(values[first : first + size])


class StoreInUse(RuntimeError):
    """Another process owns the embedded store."""


@dataclass(frozen=True)
class Target:
    url: str
    embedded_path: Path | None  # set for chdb:// URLs
    database: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme == "chdb":
            return cls(url, Path(parts.path).resolve(), DEFAULT_DATABASE)
        if parts.scheme in ("http", "https"):
            return cls(url, None, parts.path.strip("/") or DEFAULT_DATABASE)
        raise ValueError(f"METERING_CLICKHOUSE_URL must be chdb:///path or http(s)://…: {url!r}")

    def describe(self) -> str:
        if self.embedded_path is not None:
            return f"embedded chDB at {self.embedded_path}"
        parts = urlsplit(self.url)
        return f"ClickHouse server {parts.hostname}:{parts.port or 8123}/{self.database}"


class _OwnerLock:
    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + ".owner")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise StoreInUse(
                f"the embedded ClickHouse store {store_path} is in use by PID {owner}; "
                "stop that process, or set METERING_CLICKHOUSE_URL to a ClickHouse server"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the flock


class Store:
    """A connected ClickHouse with the project's database. Tables are always qualified
    (`store.table("usage_events")`), so the client's own default database never matters.

    The client is not thread-safe: a Store is used from one thread at a time (the lock
    below serialises callers that share one, e.g. the sink thread and a dashboard call).
    """

    def __init__(self, url: str) -> None:
        self.target = Target.parse(url)
        self._owner: _OwnerLock | None = None
        self._mutex = threading.RLock()
        if self.target.embedded_path is not None:
            self._owner = _OwnerLock(self.target.embedded_path)
            try:
                self.client: Client = clickhouse_connect.get_client(
                    dsn=f"chdb://{self.target.embedded_path}"
                )
            except Exception:
                self._owner.release()
                raise
        else:
            parts = urlsplit(url)
            self.client = clickhouse_connect.get_client(
                host=parts.hostname or "localhost",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=parts.username or "default",
                password=parts.password or "",
                secure=parts.scheme == "https",
            )
        self.database = self.target.database

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._mutex:
            return self.client.command(sql, parameters=parameters)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._mutex:
            return [tuple(row) for row in self.client.query(sql, parameters=parameters).result_rows]

    def rows_in(
        self,
        sql: str,
        name: str,
        values: Iterable[str],
        parameters: dict[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows of `sql`, whose `IN %(name)s` list takes `values`: sorted and
        de-duplicated, queried in slices of IN_LIST_SIZE (see `in_batches`); the rows come
        slice after slice, each slice's in the order `sql` gives."""
        return [
            row
            for batch in in_batches(sorted(set(values)))
            for row in self.rows(sql, {**(parameters or {}), name: batch})
        ]

    def insert(self, table: str, rows: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> None:
        if not rows:
            return
        with self._mutex:
            self.client.insert(self.table(table), list(rows), column_names=list(columns))

    def close(self) -> None:
        with self._mutex:
            self.client.close()
            if self._owner is not None:
                self._owner.release()
                self._owner = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
