"""What one processed batch leaves to do: the outputs to publish, the notification marks
to record in Redis once they are published, and the counts the metrics report.

A module of its own, below both the processors and `metering.metrics`, so neither
imports the other to know it."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from metering.enforcement.records import OutputMessage
from metering.topics import TopicNames


@dataclass(frozen=True, slots=True)
class Mark:
    """A member added to (`sadd`) or removed from (`srem`) one of an org's mark sets."""

    op: Literal["sadd", "srem"]
    org_id: str
    suffix: str  # keys.STOPPED or keys.notified_suffix(period)
    member: str

    def message(self, topics: TopicNames) -> OutputMessage:
        """Its record on the compacted marks topic: keyed by (org, set, member), so
        compaction keeps the latest state of each mark; a removal is a tombstone."""
        key = json.dumps([self.org_id, self.suffix, self.member], separators=(",", ":"))
        value = None if self.op == "srem" else b"1"
        return OutputMessage(topics.notification_marks, key, value)

    @classmethod
    def from_record(cls, key: bytes, value: bytes | None) -> Mark:
        org_id, suffix, member = json.loads(key)
        return cls("srem" if value is None else "sadd", org_id, suffix, member)


@dataclass
class BatchResult:
    """What to publish, and what to record in Redis once it is published."""

    outputs: list[OutputMessage] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    # Counts for the metrics: records accepted (usage: priced, a replay of an applied one
    # included; account: applied), records already applied with the same event_id
    # (not in `accepted`), records dead-lettered by reason, notifications by (kind,
    # reason) — reason "" for thresholds and balance alerts.
    accepted: int = 0
    duplicates: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notified: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
