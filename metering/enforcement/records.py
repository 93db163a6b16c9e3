"""What a processor reads and writes, independent of the Kafka client that carries it."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from confluent_kafka import Message
from pydantic import BaseModel

from schemas.outputs import DeadLetter
from schemas.validation import encode_event


# Not frozen: a frozen dataclass's __init__ costs ~0.5 µs more (object.__setattr__ per
# field), paid for every record and output on the usage hot path. Nothing mutates them.
@dataclass(slots=True)
class SourceRecord:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # broker append time on the input topics (LogAppendTime)

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)


def source_record(message: Message) -> SourceRecord:
    """A record consumed by confluent-kafka (faust's have their own, `metering.worker`)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None  # a record
    return SourceRecord(
        topic, partition, offset, message.key(), message.value(), message.timestamp()[1]
    )


@dataclass(slots=True)  # not frozen: see SourceRecord
class OutputMessage:
    topic: str
    key: str
    value: bytes | None  # None: a tombstone (the compacted marks topic)


def digest(event: BaseModel) -> str:
    """Fingerprint of an event's canonical form: the same event_id with another payload
    is a conflict, with the same payload a duplicate (G1)."""
    return digest_bytes(encode_event(event))


def digest_bytes(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()[:32]


def priced_json(
    canonical_event: bytes,
    *,
    cost_nano_usd: int,
    included_nano_usd: int,
    price_version: date,
    partition: int,
    offset: int,
) -> bytes:
    """`schemas.outputs.PricedUsage` serialised, around the event's already-encoded
    canonical bytes: the hot path encodes each event once. A test holds it equal to
    `PricedUsage(...).model_dump_json()` byte for byte."""
    return b"".join(
        (
            b'{"event":',
            canonical_event,
            f',"cost_nano_usd":{cost_nano_usd},"included_nano_usd":{included_nano_usd},'
            f'"billed_nano_usd":{cost_nano_usd - included_nano_usd},'
            f'"price_version":"{price_version.isoformat()}",'
            f'"source_partition":{partition},"source_offset":{offset}}}'.encode(),
        )
    )


def dead_letter(
    record: SourceRecord, reason: str, detail: str, event_id: str | None = None
) -> DeadLetter:
    raw = record.value or b""
    encoding: Literal["utf-8", "base64"]
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode(), "base64"
    return DeadLetter(
        reason=reason,
        detail=detail,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        key=record.key.decode("utf-8", "replace") if record.key is not None else None,
        event_id=event_id,
        payload=payload,
        payload_encoding=encoding,
    )


def dead_letter_message(
    topic: str, record: SourceRecord, reason: str, detail: str, event_id: str | None = None
) -> OutputMessage:
    """`record` dead-lettered with its reason, ready for `topic`, keyed like its source."""
    key = record.key.decode("utf-8", "replace") if record.key else ""
    return OutputMessage(topic, key, encode_event(dead_letter(record, reason, detail, event_id)))


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")
