"""Re-driving dead letters (G4): once the cause is fixed (the org now exists, the model
now has a price), the original bytes go back to their source topic with their key.

Safe to repeat: an event that was accepted by an earlier re-drive is a duplicate by
event_id the second time and counts once.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field

from metering import kafka_clients
from metering.emitter import producer_config
from metering.enforcement.rebuild import read_topic
from metering.settings import Settings
from schemas.outputs import DeadLetter


@dataclass
class RedriveReport:
    scanned: int = 0
    redriven: Counter[str] = field(default_factory=Counter)


def redrive(settings: Settings, reasons: set[str], dry_run: bool = False) -> RedriveReport:
    report = RedriveReport()
    inputs = {settings.topics.usage_events, settings.topics.account_events}
    producer = kafka_clients.producer(producer_config(settings.kafka_bootstrap))
    for batch in read_topic(settings.kafka_bootstrap, settings.topics.usage_deadletter):
        for record in batch:
            report.scanned += 1
            letter = DeadLetter.model_validate_json(record.value or b"{}")
            if letter.reason not in reasons or letter.source_topic not in inputs:
                continue
            payload = (
                base64.b64decode(letter.payload)
                if letter.payload_encoding == "base64"
                else letter.payload.encode()
            )
            if not dry_run:
                producer.produce(
                    letter.source_topic,
                    value=payload,
                    key=letter.key.encode() if letter.key is not None else None,
                )
                producer.poll(0)
            report.redriven[letter.reason] += 1
    if producer.flush(60):
        raise RuntimeError("re-driven events were not all delivered")
    return report
