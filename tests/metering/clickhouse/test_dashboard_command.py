"""`metering dashboard` prints the dashboard queries' answers from the store."""

from __future__ import annotations

from pathlib import Path

from metering.clickhouse.migrations import migrate
from metering.clickhouse.rows import USAGE_COLUMNS, usage_row
from metering.clickhouse.store import Store
from tests.helpers import run_metering
from tests.metering.clickhouse.test_queries import MONTH, scenario


def test_top_spenders_and_one_org(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    with Store(url) as store:
        migrate(store)
        store.insert("usage_events", [usage_row(r) for r in scenario()], USAGE_COLUMNS)

    overview = run_metering("dashboard", "--month", MONTH, METERING_CLICKHOUSE_URL=url)
    assert overview.returncode == 0, overview.stderr
    assert "Top spenders, 2026-11" in overview.stdout
    assert "org_gold" in overview.stdout

    org = run_metering(
        "dashboard",
        "--org",
        "org_gold",
        "--month",
        MONTH,
        METERING_CLICKHOUSE_URL=url,
        METERING_REDIS_PREFIX="dashboard-test-nothing:",
        COLUMNS="200",
    )
    assert org.returncode == 0, org.stderr
    # ann: 1.499995 USD over two events, in the members table and the daily series: in
    # dollars and cents (half away from zero), the exact figure with --exact
    assert "1.50" in org.stdout
    assert "1.499995" not in org.stdout
    assert "2026-11-03" in org.stdout
    exact = run_metering(
        "dashboard",
        "--org",
        "org_gold",
        "--month",
        MONTH,
        "--exact",
        METERING_CLICKHOUSE_URL=url,
        METERING_REDIS_PREFIX="dashboard-test-nothing:",
        COLUMNS="200",
    )
    assert exact.returncode == 0, exact.stderr
    assert "1.499995" in exact.stdout


def test_a_store_in_use_is_one_clear_line(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    with Store(url):
        result = run_metering("dashboard", METERING_CLICKHOUSE_URL=url)
    assert result.returncode == 1
    assert "in use by PID" in result.stderr
    assert "Traceback" not in result.stderr
