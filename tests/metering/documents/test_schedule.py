"""When the nightly batch runs and which month it bills."""

from __future__ import annotations

from datetime import UTC, datetime

from metering.documents.schedule import last_closed_month, next_run


def test_next_run_is_the_next_occurrence_of_the_time_of_day() -> None:
    assert next_run(datetime(2026, 11, 30, 23, 0, tzinfo=UTC), "00:30") == datetime(
        2026, 12, 1, 0, 30, tzinfo=UTC
    )
    assert next_run(datetime(2026, 12, 1, 0, 10, tzinfo=UTC), "00:30") == datetime(
        2026, 12, 1, 0, 30, tzinfo=UTC
    )
    # exactly at the time: the next night, never a busy loop
    assert next_run(datetime(2026, 12, 1, 0, 30, tzinfo=UTC), "00:30") == datetime(
        2026, 12, 2, 0, 30, tzinfo=UTC
    )


def test_the_batch_bills_the_month_that_ended_last() -> None:
    assert last_closed_month(datetime(2026, 12, 1, 0, 30, tzinfo=UTC)) == "2026-11"
    assert last_closed_month(datetime(2026, 11, 24, 12, tzinfo=UTC)) == "2026-10"
    assert last_closed_month(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-12"
