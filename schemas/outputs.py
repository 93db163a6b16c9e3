"""What the pipeline writes: priced usage, dead letters, notifications (SPEC §4 topics)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from schemas.common import Contract, Id, UtcDatetime
from schemas.money import UsdAmount
from schemas.usage import UsageEvent


class PricedUsage(Contract):
    """`usage.priced.v1`: an accepted event with its exact cost.

    Per-event amounts are integers of nano-USD (well below 2^53, exact in any JSON
    parser); `billed` is what the org pays for it: the whole cost, except on seat-based
    seats where the part inside the member's monthly allowance is `included` (R6).
    """

    event: UsageEvent
    cost_nano_usd: int
    included_nano_usd: int
    billed_nano_usd: int
    price_version: date
    source_partition: int
    source_offset: int


class DeadLetter(Contract):
    """`usage.deadletter.v1`: rejected input, with enough to find and re-drive it."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None
    event_id: str | None
    payload: str  # the original bytes, as UTF-8 text, or base64 when not valid UTF-8
    payload_encoding: Literal["utf-8", "base64"]


class NotificationKind(StrEnum):
    THRESHOLD_REACHED = "threshold_reached"
    STOPPED = "stopped"
    RESUMED = "resumed"
    BALANCE_LOW = "balance_low"  # a self-serve balance fell below a configured level


class Notification(Contract):
    """`billing.notifications.v1`. `notification_id` is deterministic: a consumer that
    sees one twice (a replay after a crash) can drop the second (R17). Money is an exact
    decimal string of USD (`"12.345"`), as everywhere on the wire."""

    notification_id: str
    kind: NotificationKind
    org_id: Id
    user_id: Id | None  # None: about the org as a whole
    month: str | None  # YYYY-MM; None for the credit balance, which is not monthly
    threshold: str | None = None  # fraction of the cap, e.g. "0.8"
    reason: str | None = None  # for stopped/resumed: the block reason
    spend: UsdAmount | None = None  # the subject's billed spend this month
    cap: UsdAmount | None = None  # the cap the threshold is a fraction of
    balance: UsdAmount | None = None  # for balance_low; `threshold` holds the level


class DeliveryChannel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class DeliveryStatus(StrEnum):
    """What one delivery attempt of `metering notifier` came to."""

    DELIVERED = "delivered"  # the receiver took it: HTTP 2xx, or the SMTP server queued it
    RETRYING = "retrying"  # failed for now: tried again at `next_attempt_at`
    DEFERRED = "deferred"  # not tried: its endpoint had too many waiting; at `next_attempt_at`
    FAILED = "failed"  # final: dead-lettered with the reason (re-drivable)
    CANCELLED = "cancelled"  # the endpoint or every recipient went away, or the kind unrouted


class DeliveryFailure(StrEnum):
    """Why a delivery was dead-lettered (`billing.notification_deadletter.v1`)."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    REFUSED = "refused"
    ADDRESS_NOT_ALLOWED = "address_not_allowed"


class NotificationDelivery(Contract):
    """`billing.notification_deliveries.v1`: one delivery attempt of one notification to
    one channel — the attempt log the Usage page shows, and, when `status` is `retrying`
    or `deferred`, the durable schedule of the next attempt (the notifier reads its own
    records back). A chain of attempts is (`notification_id`, `channel`, `drive`); `step`
    numbers its records (the notification itself is step 0), `attempt` the tries."""

    delivery_id: str  # notification_id:channel, plus :drive when re-driven
    notification_id: str
    org_id: Id
    channel: DeliveryChannel
    drive: str = ""  # "" the first time; the dead letter's position when re-driven
    step: int
    attempt: int  # tries so far in this drive (a deferral does not count)
    status: DeliveryStatus
    endpoint: str  # the URL, or the recipients (comma-separated)
    response_status: int | None = None  # HTTP status, or SMTP reply code
    latency_ms: int | None = None  # from connecting to the receiver's answer
    error: str = ""
    decided_at: UtcDatetime  # when the pipeline published the notification
    attempted_at: UtcDatetime
    first_attempt_at: UtcDatetime  # retries stop 24 h (METERING_NOTIFY_RETRY_HOURS) after
    next_attempt_at: UtcDatetime | None = None
    notification: Notification


class DeliveryDeadLetter(Contract):
    """`billing.notification_deadletter.v1`: a delivery given up, with why and its last
    attempt (which carries the notification); `metering notifier redrive` starts it
    over."""

    reason: DeliveryFailure
    detail: str
    delivery: NotificationDelivery
