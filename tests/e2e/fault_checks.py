"""The reliability suite's pass criteria, each compared with the model (`fault_model.py`):

1. every record produced is accounted for exactly once — accepted (priced, or a
   duplicate of an accepted event) or dead-lettered with the expected reason — and
   `accepted + dead-lettered = produced`; nothing is invented, the input topic holds
   exactly what was produced;
2. Redis holds the model's counters (spend per member and org per month, allowance use,
   balances), caps and members, and the gate answers what R15 says for every member ×
   surface in both months ("blocks");
3. the notifications are the model's (R17: thresholds and stops once per subject,
   threshold/cycle and period; credit stops resumed by a purchase);
4. the documents are the reference biller's, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from redis.asyncio import Redis as AsyncRedis

from metering.gate import Gate
from metering.settings import Settings
from tests.e2e.fault_model import Model, Notice
from tests.e2e.fault_workload import POISON_REASON, SURFACES, USAGE_POISON, Record

Position = tuple[str, int, int]  # topic, partition, offset
# librdkafka's complaints while the broker restarts: neither on stderr nor in reports
QUIET = logging.getLogger("reliability.kafka")
QUIET.propagate = False
QUIET.addHandler(logging.NullHandler())


@dataclass
class Produced:
    record: Record
    expected: str  # "accepted"/"ok", "duplicate", or the dead-letter reason
    position: Position | None = None


class TopicLog:
    """Everything on some topics, read from the beginning up to their ends."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "reliability-reader",
                "enable.auto.commit": False,
            },
            logger=QUIET,
        )
        self.topics = topics
        self.records: dict[str, dict[tuple[int, int], bytes | None]] = defaultdict(dict)
        self._assigned = False
        self._next: dict[tuple[str, int], int] = {}

    def read(self, timeout_s: float = 120.0) -> None:
        """Read on until every partition's end, as it is now, is reached."""
        metadata = self.consumer.list_topics(timeout=30).topics
        partitions = [
            TopicPartition(topic, p) for topic in self.topics for p in metadata[topic].partitions
        ]
        if not self._assigned:
            self.consumer.assign(
                [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
            )
            self._assigned = True
        ends = {
            (tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=30)[1]
            for tp in partitions
        }
        deadline = time.monotonic() + timeout_s
        while any(self._next.get(key, 0) < end for key, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {self.topics} to their ends")
            for message in self.consumer.consume(num_messages=5000, timeout=0.5):
                if message.error():
                    raise KafkaException(message.error())
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None and partition is not None and offset is not None
                self.records[topic][(partition, offset)] = message.value()
                self._next[(topic, partition)] = offset + 1

    def json(self, topic: str) -> list[tuple[int, int, Any]]:
        return [
            (p, o, json.loads(value))
            for (p, o), value in sorted(self.records[topic].items())
            if value is not None
        ]

    def close(self) -> None:
        self.consumer.close()


def _diff(expected: dict[Any, Any], actual: dict[Any, Any], limit: int = 12) -> str:
    keys = sorted(set(expected) | set(actual), key=repr)
    lines = [
        f"  {key!r}: expected {expected.get(key)!r}, got {actual.get(key)!r}"
        for key in keys
        if expected.get(key) != actual.get(key)
    ]
    more = f"\n  … and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def check_accounting(
    produced: list[Produced], log: TopicLog, settings: Settings, model: Model, when: str
) -> None:
    """Criterion 1, for usage and account records alike."""
    topics = settings.topics
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        marks = _account_marks(client, settings.redis_prefix, model)
    finally:
        client.close()
    dead: dict[Position, set[str]] = defaultdict(set)
    for _p, _o, letter in log.json(topics.usage_deadletter):
        source = (letter["source_topic"], letter["source_partition"], letter["source_offset"])
        dead[source].add(letter["reason"])
    priced: dict[Position, set[str]] = defaultdict(set)
    priced_bodies: dict[str, set[str]] = defaultdict(set)
    for _p, _o, output in log.json(topics.usage_priced):
        source = (topics.usage_events, output["source_partition"], output["source_offset"])
        priced[source].add(output["event"]["event_id"])
        priced_bodies[output["event"]["event_id"]].add(json.dumps(output, sort_keys=True))

    # The inputs hold exactly what was produced (the idempotent producer across broker
    # restarts: nothing lost, nothing doubled).
    usage_input = {(topics.usage_events, p, o) for p, o in log.records[topics.usage_events]}
    ours = {item.position for item in produced}
    mine_usage = {pos for pos in ours if pos is not None and pos[0] == topics.usage_events}
    assert usage_input == mine_usage, f"{when}: usage topic ≠ what was produced"

    wrong: dict[Any, Any] = {}
    got: dict[Any, Any] = {}
    tally: Counter[str] = Counter()
    for item in produced:
        pos = item.position
        assert pos is not None
        if pos[0] == topics.usage_events:
            outcome = _usage_outcome(pos, priced, dead)
        else:
            outcome = _account_outcome(pos, marks, dead)
        tally["duplicate" if outcome == "duplicate" else _kind(outcome)] += 1
        if outcome != item.expected:
            wrong[pos] = item.expected
            got[pos] = outcome
    assert not wrong, f"{when}: records with the wrong outcome (expected vs got):\n" + _diff(
        wrong, got
    )
    # G1: accepted (priced, or the same event again) + dead-lettered = produced
    assert tally["accepted"] + tally["duplicate"] + tally["dead"] == len(produced), tally

    # Nothing invented: every output comes from a produced record (or an API request).
    api_positions = {
        (topics.account_events, p, o) for p, o in log.records[topics.account_events]
    } - ours
    stray = (set(priced) | set(dead)) - ours - api_positions
    assert not stray, f"{when}: outputs of records never produced: {sorted(stray)[:5]}"
    for pos in api_positions:  # owner controls from the API, retried after kills
        outcome = _account_outcome(pos, marks, dead)
        assert outcome in {"ok", "duplicate_purchase"}, f"{when}: API event at {pos}: {outcome}"
    # Replays re-publish the same priced output, never another one.
    for event_id, bodies in priced_bodies.items():
        assert len(bodies) == 1, f"{when}: {event_id} priced differently: {bodies}"
    priced_events = {
        json.loads(next(iter(b)))["event"]["event_id"]: json.loads(next(iter(b)))
        for b in priced_bodies.values()
    }
    assert set(priced_events) == model.ref.accepted, f"{when}: priced event ids differ"
    costs = {
        eid: (out["cost_nano_usd"], out["included_nano_usd"], out["billed_nano_usd"])
        for eid, out in priced_events.items()
    }
    expected_costs = {eid: (row[5], row[5] - row[6], row[6]) for eid, row in model.ref.rows.items()}
    assert costs == expected_costs, f"{when}: priced amounts differ:\n" + _diff(
        expected_costs, costs
    )


def _kind(outcome: str) -> str:
    return "accepted" if outcome in {"accepted", "ok"} else "dead"


def _usage_outcome(
    pos: Position, priced: dict[Position, set[str]], dead: dict[Position, set[str]]
) -> str:
    if pos in priced and pos in dead:
        return f"both priced {priced[pos]} and dead-lettered {dead[pos]}"
    if pos in priced:
        return "accepted" if len(priced[pos]) == 1 else f"priced as {priced[pos]}"
    if pos in dead:
        return next(iter(dead[pos])) if len(dead[pos]) == 1 else f"reasons {dead[pos]}"
    return "duplicate"


def _account_marks(client: redis.Redis, prefix: str, model: Model) -> dict[tuple[int, int], str]:
    """Where in the account topic each applied event sits, with its recorded outcome."""
    marks = {}
    for org_id in model.orgs:
        for raw in client.hgetall(f"{prefix}{{{org_id}}}:account_ids").values():
            _digest, partition, offset, outcome = str(raw).split("|", 3)
            marks[(int(partition), int(offset))] = outcome.split(":", 1)[0]
    return marks


def _account_outcome(
    pos: Position, marks: dict[tuple[int, int], str], dead: dict[Position, set[str]]
) -> str:
    mark = marks.get((pos[1], pos[2]))
    if pos in dead:
        reasons = dead[pos]
        reason = next(iter(reasons)) if len(reasons) == 1 else f"reasons {reasons}"
        if mark is not None and mark != reason:
            return f"dead-lettered {reason} but recorded {mark}"
        return reason
    if mark == "ok":
        return "ok"
    if mark is not None:
        return f"recorded {mark} but not dead-lettered"
    return "duplicate"


def check_redis(settings: Settings, model: Model, months: tuple[str, ...], when: str) -> None:
    """Criterion 2: counters, balances, caps and members."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    prefix = settings.redis_prefix
    actual: dict[Any, Any] = {}
    expected: dict[Any, Any] = {}
    try:
        for org_id, org in model.orgs.items():
            base = f"{prefix}{{{org_id}}}"
            for month in months:
                spend = client.hgetall(f"{base}:spend:{month}")
                actual[(org_id, month)] = {k: int(v) for k, v in spend.items() if int(v)}
                expected[(org_id, month)] = model.ref.spend_hash(org_id, month)
            balance = client.get(f"{base}:balance")
            actual[(org_id, "balance")] = int(balance) if balance is not None else 0
            expected[(org_id, "balance")] = model.ref.orgs[org_id].balance
            actual[(org_id, "caps")] = {
                u: int(c) for u, c in client.hgetall(f"{base}:caps").items()
            }
            expected[(org_id, "caps")] = org.user_caps
            org_cap = client.hget(f"{base}:meta", "org_cap")
            actual[(org_id, "org_cap")] = int(org_cap) if org_cap else None
            expected[(org_id, "org_cap")] = org.org_cap
            actual[(org_id, "members")] = client.hgetall(f"{base}:members")
            expected[(org_id, "members")] = {u: f"{s}|{r}" for u, (s, r) in org.members.items()}
            stops = {str(m) for m in client.smembers(f"{base}:stopped")}
            credit_stops = {m for m in stops if m.startswith("-|")}
            actual[(org_id, "credit stops")] = credit_stops
            expected[(org_id, "credit stops")] = {
                f"-|credits_exhausted|org|{cycle}" for cycle in org.credit_stops
            }
    finally:
        client.close()
    assert actual == expected, f"{when}: Redis differs from the model:\n" + _diff(expected, actual)


def check_gates(settings: Settings, model: Model, months: tuple[str, ...], when: str) -> None:
    """Criterion 2, blocks: the gate (with its clock in each month) for every member, a
    stranger and every surface."""
    questions = [
        (org_id, user, surface, month)
        for org_id, org in sorted(model.orgs.items())
        for user in [*sorted(org.members), "stranger_0"]
        for surface in SURFACES
        for month in months
    ]

    async def ask() -> list[str | None]:
        client = AsyncRedis.from_url(settings.redis_url)
        book = settings.load_price_book()
        try:
            answers = []
            for month in months:
                noon = datetime.fromisoformat(f"{month}-15T12:00:00+00:00")
                gate = Gate(client, book, partial(_at, noon), settings.redis_prefix)
                for org_id, user, surface, asked in questions:
                    if asked == month:
                        decision = await gate.check(org_id, user, surface)
                        answers.append(decision.reason.value if decision.reason else None)
            return answers
        finally:
            await client.aclose()

    ordered = [q for month in months for q in questions if q[3] == month]
    actual = dict(zip(ordered, asyncio.run(ask()), strict=True))
    expected = {q: model.gate(*q) for q in ordered}
    assert actual == expected, f"{when}: the gate differs from R15 on the model:\n" + _diff(
        expected, actual
    )


def _at(moment: datetime) -> datetime:
    return moment


def notices(log: TopicLog, topic: str) -> tuple[set[Notice], set[Notice]]:
    """(everything but the new-month job's resumes, the monthly resumes) as notices."""
    found: set[Notice] = set()
    monthly_resumes: set[Notice] = set()
    for _p, _o, n in log.json(topic):
        kind = n["kind"]
        if kind == "threshold_reached":
            found.add((kind, n["org_id"], n["user_id"], n["month"], n["threshold"]))
        elif kind == "balance_low":
            _org, _kind, level, cycle = n["notification_id"].rsplit(":", 3)
            found.add((kind, n["org_id"], int(level), int(cycle)))
        else:
            cycle = n["notification_id"].rsplit("|", 1)[1]
            notice = (kind, n["org_id"], n["user_id"], n["month"], n["reason"], cycle)
            (monthly_resumes if kind == "resumed" and n["month"] else found).add(notice)
    return found, monthly_resumes


def check_notifications(log: TopicLog, settings: Settings, model: Model, when: str) -> None:
    """Criterion 3. Stops of a past month are lifted by the workers' new-month job on
    its own schedule, so only their subset relation is checked."""
    found, monthly_resumes = notices(log, settings.topics.notifications)
    expected = model.notices
    missing, extra = sorted(expected - found, key=repr), sorted(found - expected, key=repr)
    assert not missing and not extra, (
        f"{when}: notifications differ from the model:\n  missing {missing[:8]}"
        f"\n  unexpected {extra[:8]}"
    )
    stopped = {("resumed", *n[1:]) for n in found if n[0] == "stopped"}
    assert monthly_resumes <= stopped, (
        f"{when}: resumed but never stopped: {monthly_resumes - stopped}"
    )


def _flat(document: dict[str, Any]) -> dict[str, Any]:
    """A document with each line a key of its own, for readable differences."""
    flat = {key: value for key, value in document.items() if key != "lines"}
    for index, line in enumerate(document.get("lines", [])):
        flat[f"lines[{index}]"] = line
    return flat


def file_bytes(document: dict[str, Any]) -> bytes:
    """A document file: its JSON in SPEC field order, two-space indent, a final newline
    (metering/documents/records.py; SPEC §4 fixes the fields, not the layout)."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def check_documents(out: Path, model: Model, month: str) -> dict[str, bytes]:
    """Criterion 4: the files of `billing run --month` equal the reference biller's
    documents, byte for byte. Returns the files."""
    expected = model.documents(month)
    files = {path.stem: path.read_bytes() for path in sorted(out.glob("*.json"))}
    assert set(files) == set(expected), (
        f"documents of {month}: missing {sorted(set(expected) - set(files))}, "
        f"unexpected {sorted(set(files) - set(expected))}"
    )
    for document_id, body in files.items():
        actual = json.loads(body)
        assert actual == expected[document_id], (
            f"{document_id} differs from the reference:\n"
            + _diff(_flat(expected[document_id]), _flat(actual))
        )
        assert body == file_bytes(expected[document_id]), f"{document_id}: not byte for byte"
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def check_coverage(produced: list[Produced], model: Model, documents: dict[str, Any]) -> None:
    """The scenario exercised what the suite is for (a guard on the generator: a change
    that stops producing, say, late purchases must not leave the suite passing)."""
    outcomes = {item.expected for item in produced}
    wanted = {POISON_REASON.get(kind, kind) for kind in USAGE_POISON} | {
        "accepted",
        "duplicate",
        "event_id_conflict",
        "unknown_model",
        "unknown_org",
        "ok",
        "invalid_money",
        "unknown_event_type",
        "not_permitted",
        "not_self_serve",
        "duplicate_purchase",
        "unknown_member",
        "org_already_exists",
        "member_already_exists",
        "seat_type_not_in_plan",
        "seat_removal_refused",
    }
    missing: list[Any] = sorted(wanted - outcomes)
    kinds = {(n[0], n[4] if n[0] in {"stopped", "resumed"} else None) for n in model.notices}
    missing += [
        kind
        for kind in [
            ("threshold_reached", None),
            ("balance_low", None),
            ("stopped", "user_cap_reached"),
            ("stopped", "org_cap_reached"),
            ("stopped", "seat_allowance_exhausted"),
            ("stopped", "credits_exhausted"),
            ("resumed", "credits_exhausted"),
        ]
        if kind not in kinds
    ]
    lines = [line["description"] for doc in documents.values() for line in doc["lines"]]
    if not any(line.startswith("Adjustment:") for line in lines):
        missing.append("late usage (an adjustment line)")
    if not any(line.startswith("Credit purchase") and "received after" in line for line in lines):
        missing.append("a late credit purchase")
    months = sorted({row.month for row in model.rows})
    lifted = [
        (org_id, user)
        for org_id, org in model.orgs.items()
        for user in org.members
        if model.gate(org_id, user, "chat_web", months[0])
        in {"user_cap_reached", "org_cap_reached"}
        and model.gate(org_id, user, "chat_web", months[-1]) is None
    ]
    if not lifted:
        missing.append("a cap block lifted by the new month")
    assert not missing, f"the scenario did not exercise: {missing}"
