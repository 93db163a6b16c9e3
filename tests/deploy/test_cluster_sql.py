"""deploy/clickhouse/cluster.sql checked against the migrations, so the two cannot drift.

The migrations (`schemas/clickhouse/*.sql`, read with the app's own `bundled_migrations`)
are what a single node gets; cluster.sql is written by hand (deploy/clickhouse/README.md)
and nothing runs it here, since no cluster does. So both are read as DDL text: every
table of the migrations must be in cluster.sql as `<table>_local`, with the same columns
(names, types, defaults, in order), indexes, PARTITION BY and ORDER BY, on the
Replicated form of its engine, behind a Distributed table under the public name sharded
by org; every view the same, a materialized one on the `_local` tables. cluster.sql has
nothing else but `schema_migrations` (which `migrations.py` creates, not a migration).
Each check returns its problems; the last tests alter a copy of either side in memory
to show that the checks can fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metering.clickhouse.migrations import MIGRATIONS_TABLE, Migration, bundled_migrations

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SQL = ROOT / "deploy" / "clickhouse" / "cluster.sql"
DATABASE = "metering"  # cluster.sql's database (its README: replace it throughout)
# Rows of an org on one shard: the (org_id, …) de-duplication and FINAL are per shard.
SHARDING_KEY = "cityHash64(org_id)"
# Clause keywords after a table's column list, in the order ClickHouse takes them.
CLAUSES = ("ENGINE =", "PARTITION BY", "PRIMARY KEY", "ORDER BY", "SAMPLE BY", "TTL", "SETTINGS")
COLUMN_EXTRAS = r"DEFAULT|MATERIALIZED|ALIAS|EPHEMERAL|CODEC|TTL|COMMENT"


# -- reading DDL ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    type: str
    extras: str = ""  # DEFAULT …, CODEC …: as written, whitespace normalized


@dataclass
class Table:
    name: str
    columns: list[Column] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    clauses: dict[str, str] = field(default_factory=dict)  # "ORDER BY" → "(org_id, …)"
    as_table: str | None = None  # CREATE TABLE t AS other


@dataclass(frozen=True)
class View:
    name: str
    materialized: bool
    to: str | None
    select: str


@dataclass
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)
    views: dict[str, View] = field(default_factory=dict)


class UnknownStatement(ValueError):
    """DDL this reader does not know: teach it, rather than let it go unchecked."""


def _normalized(sql: str) -> str:
    """One statement, comparable: comments dropped, the database and `ON CLUSTER` taken
    off names, whitespace collapsed and none around parentheses and commas."""
    sql = re.sub(r"--[^\n]*", "", sql)
    sql = re.sub(rf"\b{DATABASE}\.(\w+)", r"\1", sql)
    sql = sql.replace(" ON CLUSTER '{cluster}'", "")
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\s*([(),])\s*", r"\1", sql)


def statements(text: str) -> list[str]:
    """A file's statements (its comments may hold a `;`, so they go first)."""
    text = re.sub(r"--[^\n]*", "", text)
    return [s for s in (_normalized(part) for part in text.split(";")) if s]


def _split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _closing(text: str, opening: int) -> int:
    """The index of the parenthesis that closes the one at `opening`."""
    depth = 0
    for i in range(opening, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise UnknownStatement(f"unbalanced parentheses: {text}")


def _column(definition: str) -> Column:
    name, _, rest = definition.partition(" ")
    found = re.match(rf"(?P<type>.+?)(?: (?P<extras>(?:{COLUMN_EXTRAS})\b.*))?$", rest)
    if not found:
        raise UnknownStatement(f"column without a type: {definition}")
    return Column(name.strip("`"), found["type"], found["extras"] or "")


def _clauses(tail: str) -> dict[str, str]:
    keywords = "|".join(re.escape(k) for k in CLAUSES)
    parts = re.split(rf"\b({keywords}) ?", tail.strip())
    if parts[0].strip():
        raise UnknownStatement(f"unexpected {parts[0]!r} before {tail}")
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def _create_table(schema: Schema, sql: str) -> None:
    head = re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+) ?", sql)
    assert head
    name, rest = head[1], sql[head.end() :]
    if name in schema.tables:  # IF NOT EXISTS: the first definition stays
        return
    table = Table(name)
    if rest.startswith("("):
        end = _closing(rest, 0)
        for item in _split_top_level(rest[1:end]):
            if item.startswith("INDEX "):
                table.indexes.append(item.removeprefix("INDEX "))
            elif item.startswith(("CONSTRAINT ", "PROJECTION ")):
                raise UnknownStatement(f"{name}: {item}")
            else:
                table.columns.append(_column(item))
        rest = rest[end + 1 :]
    else:
        found = re.match(r"AS (\w+) ?", rest)
        if not found:
            raise UnknownStatement(sql)
        table.as_table, rest = found[1], rest[found.end() :]
    table.clauses = _clauses(rest)
    schema.tables[name] = table


def _alter_table(schema: Schema, sql: str) -> None:
    found = re.match(r"ALTER TABLE (\w+) (.*)$", sql)
    assert found
    table = schema.tables[found[1]]
    for action in _split_top_level(found[2]):
        if index := re.match(r"ADD INDEX (?:IF NOT EXISTS )?(\w+) (.*)$", action):
            if not any(i.split(" ")[0] == index[1] for i in table.indexes):
                table.indexes.append(f"{index[1]} {index[2]}")
        elif column := re.match(
            r"ADD COLUMN (?:IF NOT EXISTS )?(.*?)(?: (FIRST|AFTER (\w+)))?$", action
        ):
            added = _column(column[1])
            if any(c.name == added.name for c in table.columns):
                continue
            names = [c.name for c in table.columns]
            if column[2] == "FIRST":
                table.columns.insert(0, added)
            elif column[3]:
                table.columns.insert(names.index(column[3]) + 1, added)
            else:
                table.columns.append(added)
        else:
            raise UnknownStatement(f"{found[1]}: {action}")


def _create_view(schema: Schema, sql: str) -> None:
    found = re.match(
        r"CREATE (MATERIALIZED )?VIEW (?:IF NOT EXISTS )?(\w+) (?:TO (\w+) )?AS (.*)$", sql
    )
    assert found
    if found[2] not in schema.views:
        schema.views[found[2]] = View(found[2], bool(found[1]), found[3], found[4])


def read_schema(sqls: Iterable[str]) -> Schema:
    """The objects that these statements, run in order, leave behind."""
    schema = Schema()
    for sql in sqls:
        if sql.startswith("CREATE DATABASE "):
            continue
        if sql.startswith("CREATE TABLE "):
            _create_table(schema, sql)
        elif sql.startswith("ALTER TABLE "):
            _alter_table(schema, sql)
        elif re.match(r"CREATE (MATERIALIZED )?VIEW ", sql):
            _create_view(schema, sql)
        else:
            raise UnknownStatement(sql)
    return schema


def migrations_schema(migrations: list[Migration]) -> Schema:
    return read_schema(_normalized(sql) for m in migrations for sql in m.statements(DATABASE))


# -- the checks ----------------------------------------------------------------------------
def _local(name: str) -> str:
    return f"{name}_local"


def _replicated(engine: str, table: str) -> str:
    """The Replicated form of a MergeTree engine, on the Keeper path the README gives."""
    found = re.fullmatch(r"(\w*MergeTree)(?:\((.*)\))?", engine)
    if not found:
        return f"<{engine} has no Replicated form>"
    arguments = [f"'/clickhouse/tables/{{shard}}/{{database}}/{table}'", "'{replica}'"]
    return f"Replicated{found[1]}({','.join([*arguments, *filter(None, [found[2]])])})"


def _first_difference(expected: list[Column], actual: list[Column]) -> str:
    for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want != got:
            return f"column {i + 1} is {got} instead of {want}"
    missing = [c.name for c in expected[len(actual) :]]
    extra = [c.name for c in actual[len(expected) :]]
    return f"missing {missing}" if missing else f"extra {extra}"


def table_problems(migrated: Schema, cluster: Schema) -> list[str]:
    """Each table of the migrations as `<name>_local`, the same but for the engine."""
    problems = []
    for name, table in migrated.tables.items():
        local = cluster.tables.get(_local(name))
        if local is None:
            problems.append(f"{name}: no {_local(name)} in cluster.sql")
            continue
        if local.columns != table.columns:
            difference = _first_difference(table.columns, local.columns)
            problems.append(f"{name}: columns differ: {difference}")
        if local.indexes != table.indexes:
            problems.append(f"{name}: indexes {local.indexes} instead of {table.indexes}")
        for clause in CLAUSES[1:]:
            if local.clauses.get(clause) != table.clauses.get(clause):
                problems.append(
                    f"{name}: {clause} {local.clauses.get(clause)} "
                    f"instead of {table.clauses.get(clause)}"
                )
        engine = _replicated(table.clauses.get("ENGINE =", ""), _local(name))
        if local.clauses.get("ENGINE =") != engine:
            problems.append(f"{name}: ENGINE = {local.clauses.get('ENGINE =')} instead of {engine}")
    return problems


def distributed_problems(migrated: Schema, cluster: Schema) -> list[str]:
    """Each table of the migrations under its own name: Distributed over `_local`."""
    problems = []
    for name in migrated.tables:
        public = cluster.tables.get(name)
        engine = f"Distributed('{{cluster}}','{DATABASE}','{_local(name)}',{SHARDING_KEY})"
        if public is None:
            problems.append(f"{name}: no Distributed table {name} in cluster.sql")
        elif public.as_table != _local(name) or public.clauses != {"ENGINE =": engine}:
            problems.append(
                f"{name}: AS {public.as_table} {public.clauses} instead of "
                f"AS {_local(name)} ENGINE = {engine}"
            )
    return problems


def view_problems(migrated: Schema, cluster: Schema) -> list[str]:
    """The same views; a materialized one reads and writes the `_local` tables (on the
    shard that stores the rows), never a Distributed table."""
    problems = []
    for name, view in migrated.views.items():
        expected = view
        if view.materialized:
            local = re.sub(
                r"\b(FROM|JOIN) (\w+)\b",
                lambda m: f"{m[1]} {_local(m[2]) if m[2] in migrated.tables else m[2]}",
                view.select,
            )
            to = _local(view.to) if view.to else None
            expected = View(name, True, to, local)
        found = cluster.views.get(name)
        if found is None:
            problems.append(f"{name}: no view {name} in cluster.sql")
        elif found != expected:
            problems.append(f"{name}: {found} instead of {expected}")
    return problems


def extra_problems(migrated: Schema, cluster: Schema) -> list[str]:
    """Nothing in cluster.sql that the migrations do not have."""
    known = {MIGRATIONS_TABLE} | set(migrated.tables) | {_local(t) for t in migrated.tables}
    extra = (set(cluster.tables) - known) | (set(cluster.views) - set(migrated.views))
    return [f"{name}: in cluster.sql, not in the migrations" for name in sorted(extra)]


CHECKS = (table_problems, distributed_problems, view_problems, extra_problems)


def drift(migrations: list[Migration], cluster_sql: str) -> list[str]:
    migrated, cluster = migrations_schema(migrations), read_schema(statements(cluster_sql))
    return [problem for check in CHECKS for problem in check(migrated, cluster)]


# -- the tests -----------------------------------------------------------------------------
def test_the_reader_sees_every_object_of_both_files() -> None:
    migrated = migrations_schema(bundled_migrations())
    cluster = read_schema(statements(CLUSTER_SQL.read_text()))
    assert set(migrated.tables) >= {"usage_events", "usage_daily", "documents"}
    assert migrated.tables["usage_events"].columns[0] == Column("event_id", "String")
    assert migrated.tables["usage_events"].indexes == [  # from a later migration's ALTER
        "inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1"
    ]
    assert migrated.views["usage_daily_mv"].to == "usage_daily"
    assert cluster.tables["usage_events_local"].clauses["ORDER BY"] == "(org_id,event_id)"


def test_cluster_sql_matches_the_migrations() -> None:
    assert drift(bundled_migrations(), CLUSTER_SQL.read_text()) == []


# cluster.sql altered (this text → that), and the problem it must cause.
CLUSTER_CHANGES = {
    "columns swapped": (
        "    input_tokens                UInt32,\n    output_tokens               UInt32,",
        "    output_tokens               UInt32,\n    input_tokens                UInt32,",
        "usage_events: columns differ: column 6 is Column(name='output_tokens'",
    ),
    "type changed": (
        "quantity           Nullable(Int64)",
        "quantity           Nullable(Int32)",
        "account_events: columns differ: column 12",
    ),
    "default changed": (
        "    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3),\n    source_partition "
        "  UInt32,\n    source_offset      UInt64\n)\nENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/account_events_local'",
        "    inserted_at        DateTime64(3, 'UTC') DEFAULT now(),\n    source_partition "
        "  UInt32,\n    source_offset      UInt64\n)\nENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/account_events_local'",
        "account_events: columns differ: column 18",
    ),
    "column missing": (
        "    priced_offset               UInt64,\n    INDEX",
        "    INDEX",
        "usage_events: columns differ: missing ['priced_offset']",
    ),
    "index missing": (
        "    priced_offset               UInt64,\n    INDEX inserted_at_minmax inserted_at TYPE "
        "minmax GRANULARITY 1  -- ingestion-lag query\n",
        "    priced_offset               UInt64\n",
        "usage_events: indexes []",
    ),
    "order by changed": (
        "ORDER BY (month, org_id);",
        "ORDER BY (org_id, month);",
        "usage_monthly: ORDER BY (org_id,month) instead of (month,org_id)",
    ),
    "partition changed": (
        "PARTITION BY toYYYYMM(day)",
        "PARTITION BY toStartOfMonth(day)",
        "usage_daily: PARTITION BY toStartOfMonth(day) instead of toYYYYMM(day)",
    ),
    "not replicated": (
        "ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/"
        "usage_monthly_local', '{replica}')",
        "ENGINE = SummingMergeTree",
        "usage_monthly: ENGINE = SummingMergeTree instead of ReplicatedSummingMergeTree(",
    ),
    "table missing": (
        "metering.notification_deliveries_local ON CLUSTER '{cluster}'\n(",
        "metering.notification_deliveries_old ON CLUSTER '{cluster}'\n(",
        "notification_deliveries: no notification_deliveries_local in cluster.sql",
    ),
    "sharded at random": (
        "'documents_local', cityHash64(org_id))",
        "'documents_local', rand())",
        "documents: AS documents_local",
    ),
    "view on the Distributed table": (
        "FROM metering.usage_events_local\nGROUP BY org_id, month;",
        "FROM metering.usage_events\nGROUP BY org_id, month;",
        "usage_monthly_mv: View(",
    ),
    "view changed": (
        "FROM metering.account_events FINAL",
        "FROM metering.account_events",
        "credit_movements: View(",
    ),
    "extra table": (
        "CREATE TABLE IF NOT EXISTS metering.schema_migrations ",
        "CREATE TABLE IF NOT EXISTS metering.schema_migration_log ",
        "schema_migration_log: in cluster.sql, not in the migrations",
    ),
}


@pytest.mark.parametrize("change", list(CLUSTER_CHANGES))
def test_a_changed_cluster_sql_is_found(change: str) -> None:
    old, new, problem = CLUSTER_CHANGES[change]
    text = CLUSTER_SQL.read_text()
    assert text.count(old) == 1, f"{change}: the text to change is not in cluster.sql once"
    problems = drift(bundled_migrations(), text.replace(old, new))
    assert any(p.startswith(problem) for p in problems), problems


NEW_MIGRATIONS = {
    "column added": (
        "ALTER TABLE {db}.documents ADD COLUMN IF NOT EXISTS currency String DEFAULT 'USD' "
        "AFTER total_cents",
        "documents: columns differ: column 8 is Column(name='body'",
    ),
    "table added": (
        "CREATE TABLE IF NOT EXISTS {db}.invoices (id String) ENGINE = MergeTree ORDER BY id",
        "invoices: no invoices_local in cluster.sql",
    ),
    "view added": (
        "CREATE VIEW IF NOT EXISTS {db}.orgs AS SELECT DISTINCT org_id FROM {db}.usage_events",
        "orgs: no view orgs in cluster.sql",
    ),
}


@pytest.mark.parametrize("change", list(NEW_MIGRATIONS))
def test_a_migration_not_ported_to_cluster_sql_is_found(change: str) -> None:
    sql, problem = NEW_MIGRATIONS[change]
    migrations = [*bundled_migrations(), Migration(999, "new", sql)]
    problems = drift(migrations, CLUSTER_SQL.read_text())
    assert any(p.startswith(problem) for p in problems), problems
