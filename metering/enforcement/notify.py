"""Batch results, and the publish-then-record protocol of notifications (R17)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from time import perf_counter

from redis.asyncio import Redis

from billing.notifications import Due, resumes_for_past_months
from metering.enforcement.keys import OrgKeys, orgs_with_stops_key
from metering.enforcement.records import OutputMessage
from metering.metrics import REDIS_RECORD_MARKS
from metering.topics import TopicNames
from schemas.validation import encode_event


@dataclass
class BatchResult:
    """What to publish, and what to record in Redis once it is published."""

    outputs: list[OutputMessage] = field(default_factory=list)
    marks: list[tuple[str, str, str]] = field(default_factory=list)  # (op, key, member)
    # Counts for the metrics: records accepted (usage: priced, a replay of an applied one
    # included; account: applied), records already applied with the same event_id
    # (not in `accepted`), records dead-lettered by reason, notifications by (kind,
    # reason) — reason "" for thresholds and balance alerts.
    accepted: int = 0
    duplicates: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notified: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))


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
        result.notified[(item.notification.kind.value, item.notification.reason or "")] += 1
    if due and op == "sadd" and key.endswith(":stopped"):
        # Index the org for the new-month job (never removed: bounded by the org count).
        prefix = key[: key.index("{")]
        result.marks.append(("sadd", orgs_with_stops_key(prefix), org_id))


async def resume_past_months(
    client: Redis, prefix: str, topics: TopicNames, month: str
) -> BatchResult:
    """The new-month job: 'resumed' for every monthly stop of an earlier month (R16)."""
    result = BatchResult()
    members = await client.smembers(orgs_with_stops_key(prefix))
    orgs = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    if not orgs:
        return result
    pipe = client.pipeline(transaction=False)
    for org_id in orgs:
        pipe.smembers(OrgKeys(prefix, org_id).stopped)
    for org_id, stopped in zip(orgs, await pipe.execute(), strict=True):
        marks = {m.decode() if isinstance(m, bytes) else m for m in stopped}
        due = resumes_for_past_months(org_id, marks, month)
        publish_due(topics, org_id, due, ("srem", OrgKeys(prefix, org_id).stopped), result)
    return result


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
    started = perf_counter()
    await pipe.execute()
    REDIS_RECORD_MARKS.observe(perf_counter() - started)
