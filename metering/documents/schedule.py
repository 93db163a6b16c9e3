"""The nightly batch inside `metering run`: every night at METERING_BILLING_AT (UTC) —
and once at start-up, to catch up a night the process was down — bill the month that
ended last. Each night after the first of a month finds that month issued and changes
nothing (the batch is idempotent), so a missed night costs nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

from metering.clickhouse.store import Store
from metering.documents.batch import BatchReport, BillingBatch
from metering.settings import Settings

log = logging.getLogger("metering.billing")


def next_run(now: datetime, at: str) -> datetime:
    """The first moment after `now` whose UTC time of day is `at` (HH:MM)."""
    hour, minute = (int(part) for part in at.split(":"))
    today = datetime.combine(now.astimezone(UTC).date(), time(hour, minute), tzinfo=UTC)
    return today if today > now else today + timedelta(days=1)


def last_closed_month(now: datetime) -> str:
    first = now.astimezone(UTC).date().replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


class NightlyBilling:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], datetime]) -> None:
        self._settings = settings
        self._batch = BillingBatch(settings, store, clock=clock)
        self._clock = clock

    def run_once(self) -> BatchReport:
        month = last_closed_month(self._clock())
        report = self._batch.run(month, self._settings.resolved_documents_dir / month)
        log.warning(
            "billing %s: %d documents issued, %d of the month on file",
            month,
            sum(report.issued.values()),
            len(report.documents),
        )
        return report

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: a run now, then one every night. A failed run is logged and
        retried at the next one (documents are only ever issued whole, once)."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("the billing batch failed; it runs again at the next schedule")
            now = self._clock()
            stop.wait((next_run(now, self._settings.billing_at) - now).total_seconds())


def start_nightly_billing(
    settings: Settings, store: Store, stop: threading.Event
) -> threading.Thread:
    nightly = NightlyBilling(settings, store, lambda: datetime.now(UTC))
    thread = threading.Thread(target=nightly.run, args=(stop,), name="nightly-billing", daemon=True)
    thread.start()
    return thread
