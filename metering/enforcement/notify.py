"""The publish-then-record protocol of notifications (R17).

A notification is published together with its *mark* on the compacted topic
`billing.notification_marks.v1` (a set member added, or a tombstone when it is removed);
only once the broker has both is the mark recorded in Redis. So a crash in between
re-publishes the same notification id and never loses one, and `metering rebuild`
restores every mark from the marks topic for as long as it matters — whatever the
notifications topic's own retention has dropped.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Literal

import redis
from redis.asyncio import Redis

from billing.notifications import Due, resumes_for_past_months
from metering.enforcement.batch_result import BatchResult, Mark
from metering.enforcement.keys import STOPPED, OrgKeys, orgs_with_stops_key
from metering.enforcement.records import OutputMessage
from metering.metrics import REDIS_RECORD_MARKS
from metering.topics import TopicNames
from schemas.validation import encode_event


def publish_due(
    topics: TopicNames,
    org_id: str,
    due: list[Due],
    result: BatchResult,
    *,
    op: Literal["sadd", "srem"],
    suffix: str,
) -> None:
    """Queue due notifications and their marks for publishing, and the marks for
    recording in Redis after."""
    for item in due:
        mark = Mark(op, org_id, suffix, item.mark)
        result.outputs.append(
            OutputMessage(topics.notifications, org_id, encode_event(item.notification))
        )
        result.outputs.append(mark.message(topics))
        result.marks.append(mark)
        result.notified[(item.notification.kind.value, item.notification.reason or "")] += 1


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
        publish_due(topics, org_id, due, result, op="srem", suffix=STOPPED)
    return result


def queue_marks(pipe: Any, prefix: str, marks: list[Mark]) -> None:
    """The Redis commands that record `marks` (on a pipeline, asyncio or not)."""
    for mark in marks:
        key = OrgKeys(prefix, mark.org_id).marks(mark.suffix)
        if mark.op == "sadd":
            pipe.sadd(key, mark.member)
            if mark.suffix == STOPPED:
                # Index the org for the new-month job (never removed: bounded by orgs).
                pipe.sadd(orgs_with_stops_key(prefix), mark.org_id)
        else:
            pipe.srem(key, mark.member)


async def record_marks(client: Redis, prefix: str, marks: list[Mark]) -> None:
    """After the notifications are published: remember them, so none is sent twice."""
    if not marks:
        return
    pipe = client.pipeline(transaction=False)
    queue_marks(pipe, prefix, marks)
    started = perf_counter()
    await pipe.execute()
    REDIS_RECORD_MARKS.observe(perf_counter() - started)


def record_marks_sync(client: redis.Redis, prefix: str, marks: list[Mark]) -> None:
    """`record_marks` for a synchronous client (the usage hot path's thread)."""
    if not marks:
        return
    pipe = client.pipeline(transaction=False)
    queue_marks(pipe, prefix, marks)
    started = perf_counter()
    pipe.execute()
    REDIS_RECORD_MARKS.observe(perf_counter() - started)
