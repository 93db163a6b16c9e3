"""Named points at which a test can make a process fail on purpose (the crash tests).

Production code only marks the moments where a crash matters — a batch stored but its
offsets not committed, documents published but not stored — by calling `reached`. Only
test code installs anything (`tests/e2e/faulty.py`, which then runs the normal command
in the same process), so no setting or environment variable can make a deployed
process exit on purpose, and reaching a point costs one dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class Point(StrEnum):
    # The ClickHouse sink stored a batch and has not committed its offsets yet.
    SINK_BATCH_STORED = "sink-batch-stored"
    # `billing run` published documents to billing.documents.v1, not yet stored them.
    DOCUMENTS_PUBLISHED = "documents-published"


_installed: dict[Point, Callable[[], None]] = {}


def install(point: Point, hook: Callable[[], None]) -> None:
    """Call `hook` each time this process reaches `point` (tests only)."""
    _installed[point] = hook


def reached(point: Point) -> None:
    """Mark `point`: does nothing unless a test installed a hook for it."""
    hook = _installed.get(point)
    if hook is not None:
        hook()
