"""Versioned schema migrations (`schemas/clickhouse/NNN_name.sql`), applied in order at
start-up. Each statement is idempotent (IF NOT EXISTS) and a migration is recorded after
it ran, so a crash half-way simply runs it again. A recorded migration whose file has
changed since is refused: schema history is append-only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from metering.clickhouse.store import Store

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self, database: str) -> list[str]:
        text = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in text.format(db=database).split(";") if s.strip()]


class MigrationChanged(RuntimeError):
    pass


def bundled_migrations() -> list[Migration]:
    files = resources.files("schemas").joinpath("clickhouse")
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append(Migration(int(version), name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def migrate(store: Store, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply what is missing; returns the migrations applied now."""
    migrations = bundled_migrations() if migrations is None else migrations
    store.command(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    store.command(
        f"CREATE TABLE IF NOT EXISTS {store.table(MIGRATIONS_TABLE)} "
        "(version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    applied = {
        int(version): checksum
        for version, checksum in store.rows(
            f"SELECT version, checksum FROM {store.table(MIGRATIONS_TABLE)} FINAL"
        )
    }
    done = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationChanged(
                    f"migration {migration.version}_{migration.name} changed after it was "
                    "applied; add a new migration instead"
                )
            continue
        for statement in migration.statements(store.database):
            store.command(statement)
        store.insert(
            MIGRATIONS_TABLE,
            [(migration.version, migration.name, migration.checksum)],
            ["version", "name", "checksum"],
        )
        done.append(migration)
    return done
