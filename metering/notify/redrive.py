"""Re-driving delivery dead letters: once the receiver is fixed (the endpoint answers
again, the URL was corrected, the mailbox exists), each chosen dead letter becomes a new
delivery chain — a `retrying` record due now on the deliveries topic, which the notifier
carries out like any scheduled retry, with the same `webhook-id`.

The chain is named after the dead letter's position (`drive`), so re-driving the same
letter again asks for the same step of the same chain, which the notifier skips once it
was carried out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from metering import kafka_clients
from metering.emitter import producer_config
from metering.enforcement.rebuild import read_topic
from metering.settings import Settings
from schemas.outputs import DeliveryDeadLetter, DeliveryStatus
from schemas.validation import encode_event


@dataclass
class RedriveReport:
    scanned: int = 0
    redriven: Counter[str] = field(default_factory=Counter)


def dead_letters(settings: Settings) -> list[tuple[int, int, DeliveryDeadLetter]]:
    """Every delivery dead letter with its partition and offset."""
    topic = settings.topics.notification_deadletter
    return [
        (
            record.partition,
            record.offset,
            DeliveryDeadLetter.model_validate_json(record.value or b""),
        )
        for batch in read_topic(settings.kafka_bootstrap, topic)
        for record in batch
    ]


def redrive(
    settings: Settings,
    reasons: set[str] | None = None,
    org_id: str | None = None,
    dry_run: bool = False,
) -> RedriveReport:
    report = RedriveReport()
    producer = kafka_clients.producer(producer_config(settings.kafka_bootstrap))
    now = datetime.now(UTC)
    for partition, offset, letter in dead_letters(settings):
        report.scanned += 1
        last = letter.delivery
        if (reasons and letter.reason.value not in reasons) or (org_id and last.org_id != org_id):
            continue
        drive = f"r{partition}.{offset}"
        fresh = last.model_copy(
            update={
                "delivery_id": f"{last.notification_id}:{last.channel.value}:{drive}",
                "drive": drive,
                "step": 0,
                "attempt": 0,
                "status": DeliveryStatus.RETRYING,
                "response_status": None,
                "latency_ms": None,
                "error": f"re-driven ({letter.reason.value})",
                "attempted_at": now,
                "first_attempt_at": now,
                "next_attempt_at": now,
            }
        )
        if not dry_run:
            producer.produce(
                settings.topics.notification_deliveries,
                key=last.org_id.encode(),
                value=encode_event(fresh),
            )
            producer.poll(0)
        report.redriven[letter.reason.value] += 1
    if producer.flush(60):
        raise RuntimeError("re-driven deliveries were not all sent")
    return report
