"""`billing.notification_deliveries.v1` → the `notification_deliveries` table, and the
query the Usage page shows owners (their org's latest delivery attempts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from metering.clickhouse.store import Store
from metering.enforcement.records import SourceRecord
from schemas.outputs import NotificationDelivery

DELIVERY_COLUMNS = (
    "delivery_id",
    "notification_id",
    "org_id",
    "kind",
    "subject",
    "channel",
    "drive",
    "step",
    "attempt",
    "status",
    "endpoint",
    "response_status",
    "latency_ms",
    "error",
    "attempted_at",
    "next_attempt_at",
    "source_partition",
    "source_offset",
)


class BadDeliveryRecord(ValueError):
    """A record on the deliveries topic that is not a NotificationDelivery."""


def delivery_row(record: SourceRecord) -> tuple[Any, ...]:
    try:
        delivery = NotificationDelivery.model_validate_json(record.value or b"")
    except ValidationError as exc:
        raise BadDeliveryRecord(str(exc).splitlines()[0]) from exc
    return (
        delivery.delivery_id,
        delivery.notification_id,
        delivery.org_id,
        delivery.notification.kind.value,
        delivery.notification.user_id or "",
        delivery.channel.value,
        delivery.drive,
        delivery.step,
        delivery.attempt,
        delivery.status.value,
        delivery.endpoint,
        delivery.response_status,
        delivery.latency_ms,
        delivery.error[:1000],
        delivery.attempted_at,
        delivery.next_attempt_at,
        record.partition,
        record.offset,
    )


@dataclass(frozen=True)
class DeliveryAttempt:
    notification_id: str
    kind: str
    subject: str
    channel: str
    attempt: int
    status: str
    endpoint: str
    response_status: int | None
    latency_ms: int | None
    error: str
    attempted_at: datetime


def recent_deliveries(store: Store, org_id: str, limit: int = 20) -> list[DeliveryAttempt]:
    """The org's latest delivery attempts, newest first."""
    rows = store.rows(
        "SELECT notification_id, kind, subject, channel, attempt, status, endpoint, "
        "response_status, latency_ms, error, attempted_at "
        f"FROM {store.table('notification_deliveries')} FINAL "
        "WHERE org_id = %(org)s ORDER BY attempted_at DESC, step DESC LIMIT %(limit)s",
        {"org": org_id, "limit": limit},
    )
    return [DeliveryAttempt(*row) for row in rows]
