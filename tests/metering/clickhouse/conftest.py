"""A fresh embedded ClickHouse store (real chDB) per test, migrated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metering.clickhouse.migrations import migrate
from metering.clickhouse.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"chdb://{tmp_path / 'clickhouse'}") as opened:
        migrate(opened)
        yield opened
