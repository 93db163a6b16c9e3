"""Usage batches: validate, de-duplicate, price, apply to Redis, decide outputs.

Synchronous: it runs in the usage hot path's thread (`metering.usage_path`), with a
synchronous Redis client. One call handles one consumed batch. Redis sees one
pipelined round trip of Lua scripts (one per org and partition: a script may only touch
one hash slot) and, only when a notification became due, a second one that records it
after it was published.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from time import perf_counter
from typing import Any

import redis
from redis.exceptions import ResponseError

from billing.notifications import (
    CREDITS_PERIOD,
    due_balance_levels,
    due_stops_and_resumes,
    due_thresholds,
    evaluated_scopes,
)
from billing.pricing import PriceBook, UnknownModel, price_usage
from metering.enforcement.base import BatchProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.keys import STOPPED, OrgKeys, notified_suffix
from metering.enforcement.notify import publish_due
from metering.enforcement.org_state import OrgState, member_entry
from metering.enforcement.records import (
    OutputMessage,
    SourceRecord,
    priced_json,
)
from metering.enforcement.scripts import SentScriptCalls, run_pipelined_sync, usage_script
from metering.enforcement.usage_marks import (
    DEFAULT_MAX_EVENT_AGE_DAYS,
    droppable_months,
    expire_at,
    live_months,
    mark_field,
    needed_until,
    payload_digest,
)
from metering.metrics import REDIS_APPLY_USAGE
from schemas.account import BillingMode, SeatType
from schemas.money import MAX_EVENT_COST_NANO_USD, MAX_TOTAL_NANO_USD, format_usd
from schemas.usage import UsageFacts
from schemas.usage_fast import canonical_usage_json, parse_usage_fast
from schemas.validation import MAX_CLOCK_SKEW, InvalidEvent, Reason, parse_usage_event

LEGACY_ALLOWANCE_SEATS = (SeatType.STANDARD, SeatType.PREMIUM)
log = logging.getLogger("metering.worker")


@dataclass(slots=True)
class _Valid:
    record: SourceRecord
    event: UsageFacts
    cost_nano_usd: int
    price_version: date
    allowances: str
    canonical: bytes  # the event's wire form, encoded once: digest and priced output use it
    month: str


@dataclass(slots=True)
class PreparedBatch:
    """A usage batch validated and priced, its script calls built, not applied yet."""

    result: BatchResult  # its dead letters so far; outcomes are added by `finish`
    ordered: list[tuple[tuple[str, int], list[_Valid]]]
    calls: list[tuple[list[str], list[Any]]]


def _allowance_spec(book: PriceBook, day: date) -> str:
    prices = [(seat, book.usage_allowance(seat, day)) for seat in LEGACY_ALLOWANCE_SEATS]
    return ",".join(f"{seat.value}={amount}" for seat, amount in prices)


def _as_set(value: Any) -> set[str]:
    # cjson encodes an empty Lua table as {} rather than [].
    return set(value) if isinstance(value, list) else set()


def _may_notify(state: dict[str, Any], balance_alert_nano_usd: int) -> bool:
    """Cheap pre-check: without caps, stops, a low balance or seat allowances there is
    nothing to notify, and most orgs have none of them."""
    meta = state["meta"]
    return bool(
        meta.get("org_cap")
        or meta.get("plan") == "seat_based"
        or (
            meta.get("billing_mode") == "self_serve"
            and int(state["balance"]) < max(balance_alert_nano_usd, 1)
        )
        or _as_set(state["stopped"])
        or any(u["cap"] for m in state["months"].values() for u in m["users"].values())
    )


def _touched_state(
    org_id: str, month: str, state: dict[str, Any], numbers: dict[str, Any]
) -> OrgState:
    """The org's state for `month` as the script's reply carries it (the numbers it read
    back after its writes, so no second read): meta and balance whole, members, caps and
    spend of the users the batch's events touched that month only — the users the
    snapshot is about. Built per org and month, not per event."""
    members, caps, billed, used = {}, {}, {}, {}
    for user_id, u in numbers["users"].items():
        member = member_entry(u["member"] or None)  # cjson: absent is false
        if member is not None:
            members[user_id] = member
        if u["cap"]:
            caps[user_id] = int(u["cap"])
        billed[user_id] = int(u["spend"])
        used[user_id] = int(u["allowance_used"])
    touched = OrgState.from_meta(
        org_id,
        month,
        state["meta"],
        members=members,
        caps_nano_usd=caps,
        balance_nano_usd=int(state["balance"]),
        org_spend_nano_usd=int(numbers["org"]),
        user_spend_nano_usd=billed,
        allowance_used_nano_usd=used,
    )
    if touched is None:  # the script reports months only once it has seen a plan
        raise RuntimeError(f"the usage script reported spend of {org_id}, an org without a plan")
    return touched


class UsageProcessor(BatchProcessor):
    _redis: redis.Redis
    # Seat allowances by day: the price book is immutable for the process's lifetime.
    _allowances: dict[date, str]

    def __init__(
        self,
        client: redis.Redis,
        *args: Any,
        balance_levels_nano_usd: tuple[int, ...] = (),
        max_event_age_days: int = DEFAULT_MAX_EVENT_AGE_DAYS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        **kwargs: Any,
    ) -> None:
        super().__init__(client, *args, **kwargs)
        self._script = usage_script(client)
        self._allowances = {}
        # (append time in ms, as a datetime, the oldest occurred_at accepted with it)
        self._received: tuple[int, datetime, datetime] = (-1, datetime.min, datetime.min)
        self._balance_levels = balance_levels_nano_usd
        self._max_age = timedelta(days=max_event_age_days)
        self._clock = clock  # the worker's clock: only for marks that may be gone
        self._now = clock()  # read once per batch (`prepare`)
        self._open: dict[str, bool] = {}  # month → its marks are still kept (this batch)
        # org → the latest month whose marks a batch was sent to drop: once per org and
        # month, not per batch (if that script then failed, Redis's expiry drops them)
        self._dropped: dict[str, str] = {}
        self._expiry: dict[str, int] = {}  # month → when Redis drops its marks
        # (oldest, newest append time in ms) → the months to look marks up in (the
        # script's argument) and the months that may be dropped: a batch has a few
        # append times and hundreds of org calls (this batch)
        self._live: dict[tuple[int, int], tuple[str, list[str]]] = {}

    def _received_at(self, record: SourceRecord) -> tuple[datetime, datetime]:
        """The record's append time, and the oldest `occurred_at` accepted with it.
        Records of one produce request share their append time: the last is kept."""
        if record.timestamp_ms != self._received[0]:
            received = record.received_at
            self._received = (record.timestamp_ms, received, received - self._max_age)
        return self._received[1], self._received[2]

    def _marks_kept(self, month: str) -> bool:
        """Whether `month`'s marks are surely still in Redis, by the worker's clock
        (remembered for the batch in `_open`)."""
        kept = self._open[month] = self._now <= needed_until(month, self._max_age)
        return kept

    def _validate(self, record: SourceRecord, result: BatchResult) -> _Valid | None:
        def reject(reason: str, detail: str, event_id: str | None = None) -> None:
            self._reject(result, record, reason, detail, event_id)

        if record.value is None:
            reject(Reason.MALFORMED_JSON.value, "record has no value")
            return None
        now, oldest = self._received_at(record)
        event: UsageFacts | None = parse_usage_fast(record.value, now=now)
        if event is None:  # not the common form, or invalid: pydantic decides the reason
            try:
                event = parse_usage_event(record.value, now=now)
            except InvalidEvent as exc:
                reject(exc.reason.value, exc.detail)
                return None
        try:
            priced = price_usage(event, self._book)
        except UnknownModel as exc:
            reject(exc.reason.value, exc.detail, event.event_id)
            return None
        if priced.cost_nano_usd > MAX_EVENT_COST_NANO_USD:
            # Only an absurd price book gets here (rates are bounded, token counts too):
            # refused before Redis, whose script holds per-event amounts in doubles.
            reject(
                Reason.AMOUNT_OUT_OF_RANGE.value,
                f"the event costs {format_usd(priced.cost_nano_usd)} USD, more than one "
                f"event may ({format_usd(MAX_EVENT_COST_NANO_USD)})",
                event.event_id,
            )
            return None
        occurred = event.occurred_at
        month = f"{occurred.year:04d}-{occurred.month:02d}"
        kept = self._open.get(month)
        if kept is None:
            kept = self._marks_kept(month)
        if occurred < oldest or not kept:
            reject(Reason.EVENT_TOO_OLD.value, self._too_old(occurred, now), event.event_id)
            return None
        day = occurred.date()
        if day not in self._allowances:
            self._allowances[day] = _allowance_spec(self._book, day)
        return _Valid(
            record,
            event,
            priced.cost_nano_usd,
            priced.price_version,
            self._allowances[day],
            canonical=canonical_usage_json(event),
            month=month,
        )

    def _too_old(self, occurred: datetime, received: datetime) -> str:
        days = self._max_age.days
        if occurred < received - self._max_age:
            return (
                f"occurred_at {occurred.isoformat()} is more than {days} days before the "
                f"event reached the broker ({received.isoformat()}); "
                "METERING_MAX_EVENT_AGE_DAYS sets the window"
            )
        return (
            f"occurred_at {occurred.isoformat()} is in a month whose de-duplication marks "
            f"are no longer kept ({days} days after it ended, by this worker's clock "
            f"{self._now.isoformat()}): a duplicate could not be recognised"
        )

    def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        """`prepare`, the scripts in one round trip, `finish`."""
        prepared = self.prepare(records)
        if not prepared.calls:
            return prepared.result
        started = perf_counter()
        replies = run_pipelined_sync(
            self._redis, self._script, prepared.calls, raise_on_error=False
        )
        REDIS_APPLY_USAGE.observe(perf_counter() - started)
        return self.finish(prepared, replies)

    def prepare(self, records: Sequence[SourceRecord]) -> PreparedBatch:
        """Everything before Redis: validate, price, group by org and partition, build
        the script calls. Needs no Redis state, so it may run while Redis is still
        applying the previous batch."""
        result = BatchResult()
        self._now = self._clock()
        self._open, self._live = {}, {}
        groups: dict[tuple[str, int], list[_Valid]] = defaultdict(list)
        for record in records:
            valid = self._validate(record, result)
            if valid is not None:
                groups[(valid.event.org_id, record.partition)].append(valid)
        ordered = list(groups.items())
        calls = [self._call(org_id, partition, events) for (org_id, partition), events in ordered]
        return PreparedBatch(result, ordered, calls)

    def send(self, prepared: PreparedBatch) -> SentScriptCalls:
        """The batch's scripts, sent to Redis now; their replies are read later."""
        return SentScriptCalls(self._redis, self._script, prepared.calls)

    def finish(self, prepared: PreparedBatch, replies: list[Any]) -> BatchResult:
        """Outcomes and notifications from the scripts' replies. Calls Redis again only
        when a script was refused (one by one, see `_apply_one_by_one`)."""
        result = prepared.result
        for ((org_id, partition), events), reply in zip(prepared.ordered, replies, strict=True):
            if isinstance(reply, ResponseError):
                state = self._apply_one_by_one(org_id, partition, events, reply)
            else:
                state = json.loads(reply)
            self._outcomes(events, state["outcomes"], result)
            if "months" in state and _may_notify(state, max(self._balance_levels, default=0)):
                self._notifications(org_id, events, state, result)
        return result

    def _call(
        self, org_id: str, partition: int, events: list[_Valid]
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = [partition, *self._months(org_id, events)]
        args += [
            "\t".join(
                (
                    str(v.record.offset),
                    mark_field(v.event.event_id),
                    payload_digest(v.canonical),
                    v.month,
                    v.event.user_id,
                    str(v.cost_nano_usd),
                    v.allowances,
                )
            )
            for v in events
        ]
        return OrgKeys(self._prefix, org_id).script_keys, args

    def _months(self, org_id: str, events: list[_Valid]) -> tuple[str, str]:
        """The script's month arguments: the months whose marks are looked up, each with
        when Redis drops them ("YYYY-MM=<unix s>,…"), and the months whose marks this
        batch drops ("YYYY-MM,…", only when that changed for the org)."""
        stamps = [v.record.timestamp_ms for v in events]
        span = (min(stamps), max(stamps))
        known = self._live.get(span)
        if known is None:
            oldest = datetime.fromtimestamp(span[0] / 1000, tz=UTC)
            newest = datetime.fromtimestamp(span[1] / 1000, tz=UTC)
            parts = []
            for month in live_months(oldest, newest, self._max_age, MAX_CLOCK_SKEW):
                at = self._expiry.get(month)
                if at is None:
                    at = self._expiry[month] = expire_at(month, self._max_age)
                parts.append(f"{month}={at}")
            known = ",".join(parts), droppable_months(oldest, self._max_age)
            self._live[span] = known
        live, drop = known
        if self._dropped.get(org_id) == drop[-1]:
            return live, ""
        self._dropped[org_id] = drop[-1]
        return live, ",".join(drop)

    def _apply_one_by_one(
        self, org_id: str, partition: int, events: list[_Valid], error: ResponseError
    ) -> dict[str, Any]:
        """Redis refused the org's script (a key of the wrong type, a corrupt counter):
        apply its events one script each, so only the events that fail are dead-lettered
        (`enforcement_failed`, outcome "E") and the others count. Safe to repeat: an
        event the failed script did apply before it stopped is recognised by its mark
        (outcome "R"). Returns one reply made of theirs, for the notifications."""
        log.error("usage script failed for %s (%s); applying its events one by one", org_id, error)
        calls = [self._call(org_id, partition, [event]) for event in events]
        replies = run_pipelined_sync(self._redis, self._script, calls, raise_on_error=False)
        merged: dict[str, Any] = {"outcomes": []}
        for reply in replies:
            if isinstance(reply, ResponseError):
                merged["outcomes"].append(f"E|{reply}")
                continue
            state = json.loads(reply)
            merged["outcomes"] += state["outcomes"]
            if "months" not in state:
                continue
            months = merged.setdefault("months", {})
            for month, numbers in state["months"].items():
                entry = months.setdefault(month, {**numbers, "users": {}})
                entry["org"], entry["notified"] = numbers["org"], numbers["notified"]
                if isinstance(numbers["users"], dict):  # cjson: an empty table is {}
                    entry["users"].update(numbers["users"])
            # The latest of these: every reply read them after its own writes.
            for name in ("meta", "balance", "balance_notified", "stopped"):
                merged[name] = state[name]
        return merged

    def _outcomes(self, events: list[_Valid], outcomes: list[str], result: BatchResult) -> None:
        priced_topic = self._topics.usage_priced  # a property: looked up once, not per event
        outputs = result.outputs
        for valid, outcome in zip(events, outcomes, strict=True):
            code, _, included_text = outcome.partition("|")
            if code in {"A", "R"}:
                priced = priced_json(
                    valid.canonical,
                    cost_nano_usd=valid.cost_nano_usd,
                    included_nano_usd=int(included_text),
                    price_version=valid.price_version,
                    partition=valid.record.partition,
                    offset=valid.record.offset,
                )
                outputs.append(OutputMessage(priced_topic, valid.event.org_id, priced))
                result.accepted += 1
            elif code == "D":
                result.duplicates += 1  # the same event, counted once (G1)
            else:
                reason, detail = {
                    "C": (
                        Reason.EVENT_ID_CONFLICT,
                        "this event_id was accepted with another payload",
                    ),
                    "U": (Reason.UNKNOWN_ORG, f"no org.created seen for {valid.event.org_id}"),
                    "O": (
                        Reason.AMOUNT_OUT_OF_RANGE,
                        f"counting {format_usd(valid.cost_nano_usd)} USD would take the "
                        f"org's or member's spend or balance past "
                        f"{format_usd(MAX_TOTAL_NANO_USD)} USD; nothing was counted",
                    ),
                    "E": (
                        Reason.ENFORCEMENT_FAILED,
                        f"Redis refused the enforcement script: {included_text[:200]}",
                    ),
                }[code]
                self._reject(result, valid.record, reason.value, detail, valid.event.event_id)

    def _notifications(
        self, org_id: str, events: list[_Valid], state: dict[str, Any], result: BatchResult
    ) -> None:
        meta = state["meta"]
        recorded_stops = _as_set(state["stopped"])
        for month, numbers in sorted(state["months"].items()):
            touched = _touched_state(org_id, month, state, numbers)
            # Allowances of the month's first day, as the account processor's snapshots.
            day = date.fromisoformat(f"{month}-01")
            snapshot = touched.spend_snapshot(self._book, day, numbers["users"])
            thresholds = due_thresholds(snapshot, _as_set(numbers["notified"]))
            stopped, resumed = due_stops_and_resumes(
                snapshot, recorded_stops, evaluated_scopes(snapshot)
            )
            notified = notified_suffix(month)
            publish_due(self._topics, org_id, thresholds, result, op="sadd", suffix=notified)
            publish_due(self._topics, org_id, stopped, result, op="sadd", suffix=STOPPED)
            publish_due(self._topics, org_id, resumed, result, op="srem", suffix=STOPPED)
            recorded_stops |= {d.mark for d in stopped}
            recorded_stops -= {d.mark for d in resumed}
        if meta["billing_mode"] == BillingMode.SELF_SERVE.value:
            low = due_balance_levels(
                org_id,
                int(state["balance"]),
                int(meta.get("purchases", "0")),
                self._balance_levels,
                _as_set(state["balance_notified"]),
            )
            publish_due(
                self._topics,
                org_id,
                low,
                result,
                op="sadd",
                suffix=notified_suffix(CREDITS_PERIOD),
            )
