"""End-to-end fixtures: a private pipeline (topics, Redis prefix, consumer group, worker)
per test, on the session's real Kafka and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline


@pytest.fixture
def pipeline(stack: RunningStack, tmp_path: Path) -> Iterator[Pipeline]:
    created = new_pipeline(stack.settings, tmp_path)
    yield created
    cleanup(created)
