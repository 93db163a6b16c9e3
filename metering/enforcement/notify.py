"""Batch results, and the publish-then-record protocol of notifications (R17)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from redis.asyncio import Redis

from billing.notifications import Due
from metering.enforcement.records import OutputMessage
from metering.topics import TopicNames
from schemas.validation import encode_event


@dataclass
class BatchResult:
    """What to publish, and what to record in Redis once it is published."""

    outputs: list[OutputMessage] = field(default_factory=list)
    marks: list[tuple[str, str, str]] = field(default_factory=list)  # (op, key, member)
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notifications: int = 0


def publish_due(
    topics: TopicNames, org_id: str, due: list[Due], record: tuple[str, str], result: BatchResult
) -> None:
    """Queue due notifications for publishing and their marks for recording after."""
    op, key = record
    for item in due:
        result.outputs.append(
            OutputMessage(topics.notifications, org_id, encode_event(item.notification))
        )
        result.marks.append((op, key, item.mark))
        result.notifications += 1


async def record_marks(client: Redis, marks: list[tuple[str, str, str]]) -> None:
    """After the notifications are published: remember them, so none is sent twice."""
    if not marks:
        return
    pipe = client.pipeline(transaction=False)
    for op, key, member in marks:
        if op == "sadd":
            pipe.sadd(key, member)
        else:
            pipe.srem(key, member)
    await pipe.execute()
