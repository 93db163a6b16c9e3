"""Connecting by URL, the embedded store's single owner, and schema migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.clickhouse.migrations import Migration, MigrationChanged, bundled_migrations, migrate
from metering.clickhouse.store import Store, StoreInUse, Target

PUBLIC_TABLES = {"usage_events", "usage_daily", "usage_monthly", "account_events"}


def test_urls_name_an_embedded_path_or_a_server_database() -> None:
    embedded = Target.parse("chdb:///srv/metering/clickhouse")
    assert embedded.embedded_path == Path("/srv/metering/clickhouse")
    assert embedded.database == "metering"
    server = Target.parse("https://app:secret@ch.internal:8443/billing")
    assert (server.embedded_path, server.database) == (None, "billing")
    assert "ch.internal:8443/billing" in server.describe()
    assert "secret" not in server.describe()
    assert Target.parse("http://localhost:8123").database == "metering"
    with pytest.raises(ValueError, match="chdb:///path or http"):
        Target.parse("postgres://localhost/db")


def test_migrations_create_the_schema_once(store: Store) -> None:
    tables = {name for (name,) in store.rows("SHOW TABLES FROM metering")}
    assert tables >= PUBLIC_TABLES
    assert migrate(store) == []  # a second start-up applies nothing
    versions = [
        v for (v,) in store.rows("SELECT version FROM metering.schema_migrations ORDER BY version")
    ]
    assert versions == [m.version for m in bundled_migrations()]


def test_a_migration_edited_after_it_ran_is_refused(store: Store) -> None:
    first = bundled_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(MigrationChanged, match="add a new migration"):
        migrate(store, [edited])


def test_a_new_migration_is_applied_after_the_others(store: Store) -> None:
    extra = Migration(900, "probe", "CREATE TABLE IF NOT EXISTS {db}.probe (x UInt8) ENGINE = Log")
    assert migrate(store, [*bundled_migrations(), extra]) == [extra]
    assert store.rows("SELECT count() FROM metering.probe") == [(0,)]


def test_the_embedded_store_has_one_owner(store: Store) -> None:
    path = store.target.embedded_path
    assert path is not None
    with pytest.raises(StoreInUse, match=r"in use by PID \d+; stop that process"):
        Store(f"chdb://{path}")
