"""Account batches: fold each org's account events into its state and store it with the
source offset, atomically (G2); refused events are dead-lettered with their reason, the
seat invoices accepted ones issue are published to `billing.documents.v1`, and every
decided event's outcome to `account.outcomes.v1` (what the ClickHouse ledger stores: the
one fold of account events is this one).

A replay of an already-applied batch (after a crash between the Redis write and the
offset commit) is recognised by the stored offset and changes nothing; its outputs are
re-derived from what was recorded per event_id: the outcome, and the outcome record and
invoices as they were published.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from time import perf_counter
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from billing.accounts import OrgAccount, Rejected, apply_account_event, renewal_date
from billing.notifications import due_stops_and_resumes, due_thresholds
from billing.pricing import PriceBook
from metering.documents.records import IssuedDocument
from metering.enforcement.base import BatchProcessor
from metering.enforcement.batch_result import BatchResult
from metering.enforcement.keys import STOPPED, OrgKeys, notified_suffix, term_ends_key
from metering.enforcement.notify import publish_due
from metering.enforcement.org_state import OrgState
from metering.enforcement.records import OutputMessage, SourceRecord, digest, month_of
from metering.enforcement.scripts import Scripts, queue_script, run_queued
from metering.enforcement.state_codec import (
    cap_fields,
    decode_account,
    encode_account,
    member_fields,
    meta_fields,
)
from metering.metrics import REDIS_APPLY_ACCOUNTS, REDIS_LOAD_ACCOUNTS, REDIS_READ_SPEND
from metering.topics import DEFAULT_TOPICS, TopicNames
from schemas.account import AccountEvent, AccountOutcome, CreditsPurchased
from schemas.documents import DocumentOrigin
from schemas.validation import InvalidEvent, Reason, encode_event, parse_account_event

log = logging.getLogger("metering.worker")

ACCEPTED = "ok"


@dataclass(frozen=True)
class _Parsed:
    record: SourceRecord
    event: AccountEvent


@dataclass
class _OrgBatch:
    """What one org's events of one partition are folded against, and what they add."""

    state: OrgAccount | None
    stored_offset: int
    marks: dict[str, str]  # event_id → recorded outcome, for the batch's event ids
    invoices: dict[str, str]  # event_id → JSON list of its published invoice records
    outcomes: dict[str, str]  # event_id → its published account.outcomes.v1 value
    new_marks: dict[str, str]
    new_invoices: dict[str, str]
    new_outcomes: dict[str, str]
    balance_delta: int = 0


def _present(ids: list[str], values: list[bytes | None]) -> dict[str, str]:
    return {i: v.decode() for i, v in zip(ids, values, strict=True) if v is not None}


def _merge(into: BatchResult, part: BatchResult) -> None:
    into.outputs += part.outputs
    into.marks += part.marks
    into.accepted += part.accepted
    into.duplicates += part.duplicates
    for reason, count in part.dead_letter_reasons.items():
        into.dead_letter_reasons[reason] += count


def _flat(fields: dict[str, str]) -> list[str]:
    return [str(len(fields))] + [part for item in sorted(fields.items()) for part in item]


class AccountProcessor(BatchProcessor):
    _redis: Redis

    def __init__(
        self, client: Redis, book: PriceBook, prefix: str = "", topics: TopicNames = DEFAULT_TOPICS
    ) -> None:
        super().__init__(client, book, prefix, topics)
        self._scripts = Scripts(client)

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        result = BatchResult()
        groups: dict[tuple[str, int], list[_Parsed]] = defaultdict(list)
        for record in records:
            try:
                if record.value is None:
                    raise InvalidEvent(Reason.MALFORMED_JSON, "record has no value")
                event = parse_account_event(record.value, now=record.received_at)
            except InvalidEvent as exc:
                self._reject(result, record, exc.reason.value, exc.detail, None)
                continue
            groups[(event.org_id, record.partition)].append(_Parsed(record, event))
        if not groups:
            return result

        ordered = list(groups.items())
        loaded = await self._load(ordered)
        writes: list[tuple[str, int, list[Any]]] = []  # org, term end (ordinal), args
        changed: dict[str, tuple[OrgAccount, SourceRecord]] = {}
        written: list[tuple[list[_Parsed], int, BatchResult]] = []
        for ((org_id, partition), parsed), org in zip(ordered, loaded, strict=True):
            group = BatchResult()  # this org's outcomes: kept once Redis has its state
            for item in parsed:
                self._fold_one(item, org, group)
            last_offset = parsed[-1].record.offset
            state = org.state
            if last_offset > org.stored_offset and state is not None:
                args: list[Any] = [
                    partition,
                    last_offset,
                    encode_account(state).decode(),
                    org.balance_delta,
                ]
                args += _flat(meta_fields(state)) + _flat(member_fields(state))
                args += _flat(cap_fields(state)) + _flat(org.new_marks)
                args += _flat(org.new_invoices) + _flat(org.new_outcomes)
                writes.append((org_id, renewal_date(state).toordinal(), args))
                changed[org_id] = (state, parsed[-1].record)
                written.append((parsed, org.stored_offset, group))
            else:
                _merge(result, group)
        script, index = self._scripts.apply_account, term_ends_key(self._prefix)

        def queue(pipe: Any) -> None:
            for org_id, term_end, args in writes:
                # The renewal timer's index, before the state it indexes: whenever a state
                # is stored its term end is indexed, even if the process dies in between.
                pipe.zadd(index, {org_id: term_end})
                queue_script(pipe, script, OrgKeys(self._prefix, org_id).script_keys, args)

        started = perf_counter()
        replies = await run_queued(self._redis, [script], queue) if writes else []
        REDIS_APPLY_ACCOUNTS.observe(perf_counter() - started)
        # Each stored state is two commands: its renewal index entry, then its script.
        for (parsed, stored_offset, group), reply in zip(written, replies[1::2], strict=True):
            if isinstance(reply, ResponseError):
                self._refused_by_redis(parsed, stored_offset, reply, result, changed)
            else:
                _merge(result, group)
        await self._reevaluate(changed, result)
        return result

    async def _load(self, ordered: list[tuple[tuple[str, int], list[_Parsed]]]) -> list[_OrgBatch]:
        """Per org and partition of the batch: the state, the stored offset, and what was
        recorded for the batch's event ids — in one round trip."""
        load = self._redis.pipeline(transaction=False)
        for (org_id, partition), parsed in ordered:
            keys = OrgKeys(self._prefix, org_id)
            load.get(keys.account)
            load.hget(keys.offsets, f"account:{partition}")
            ids = [p.event.event_id for p in parsed]
            load.hmget(keys.account_ids, ids)
            load.hmget(keys.seat_invoices, ids)
            load.hmget(keys.account_outcomes, ids)
        started = perf_counter()
        loaded = await load.execute()
        REDIS_LOAD_ACCOUNTS.observe(perf_counter() - started)
        batches = []
        for index, (_group, parsed) in enumerate(ordered):
            raw_state, raw_offset, raw_marks, raw_invoices, raw_outcomes = loaded[
                5 * index : 5 * index + 5
            ]
            ids = [p.event.event_id for p in parsed]
            batches.append(
                _OrgBatch(
                    state=decode_account(raw_state),
                    stored_offset=int(raw_offset) if raw_offset is not None else -1,
                    marks=_present(ids, raw_marks),
                    invoices=_present(ids, raw_invoices),
                    outcomes=_present(ids, raw_outcomes),
                    new_marks={},
                    new_invoices={},
                    new_outcomes={},
                )
            )
        return batches

    def _refused_by_redis(
        self,
        parsed: list[_Parsed],
        stored_offset: int,
        error: ResponseError,
        result: BatchResult,
        changed: dict[str, tuple[OrgAccount, SourceRecord]],
    ) -> None:
        """The script checks everything before its first write, so nothing of this org's
        batch is in Redis: its new events are dead-lettered, rather than the worker
        stopping for every org (issue 20)."""
        org_id = parsed[0].event.org_id
        log.error("account script failed for %s: %s", org_id, error)
        del changed[org_id]
        for item in parsed:
            if item.record.offset > stored_offset:
                self._reject(
                    result,
                    item.record,
                    Reason.ENFORCEMENT_FAILED.value,
                    f"Redis refused the account script: {str(error)[:200]}",
                    item.event.event_id,
                )

    def _fold_one(self, item: _Parsed, org: _OrgBatch, result: BatchResult) -> None:
        """Apply one event to `org`: its state, its balance credit, its recorded outcome
        and invoices, and the outputs it calls for (dead letter, seat invoices)."""
        event, record = item.event, item.record
        fingerprint = digest(event)
        position = f"{record.partition}|{record.offset}"
        previous = org.new_marks.get(event.event_id) or org.marks.get(event.event_id)
        if previous is not None:
            p_digest, p_partition, p_offset, recorded = previous.split("|", 3)
            if p_digest != fingerprint:
                self._reject(
                    result,
                    record,
                    Reason.EVENT_ID_CONFLICT.value,
                    "this event_id was applied with another payload",
                    event.event_id,
                )
            elif f"{p_partition}|{p_offset}" != position:
                result.duplicates += record.offset > org.stored_offset
                return
            elif recorded != ACCEPTED:
                reason, _, detail = recorded.partition(":")
                self._reject(result, record, reason, detail, event.event_id)  # replayed refusal
            else:  # replayed acceptance: its invoices go out again, exactly as first sent
                result.outputs += self._invoice_messages(
                    event.org_id, org.invoices.get(event.event_id)
                )
                result.duplicates += record.offset > org.stored_offset
            # Its outcome record too, as first sent (none for events decided before
            # outcomes were published: the ledger decided those itself then).
            outcome_value = org.outcomes.get(event.event_id)
            if outcome_value is not None:
                result.outputs.append(
                    OutputMessage(
                        self._topics.account_outcomes, event.org_id, outcome_value.encode()
                    )
                )
            return
        if record.offset <= org.stored_offset:
            # Applied before, but its mark is missing: cannot happen, since the mark is
            # written in the same script as the state. Refuse loudly rather than guess.
            raise RuntimeError(f"account event {event.event_id} at {position} has no outcome mark")
        outcome = apply_account_event(org.state, event, self._book)
        if isinstance(outcome, Rejected):
            self._reject(result, record, outcome.reason.value, outcome.detail, event.event_id)
            org.new_marks[event.event_id] = (
                f"{fingerprint}|{position}|{outcome.reason.value}:{outcome.detail}"
            )
            self._publish_outcome(org, result, item, outcome.reason.value, org.state)
            return
        org.new_marks[event.event_id] = f"{fingerprint}|{position}|{ACCEPTED}"
        self._publish_outcome(org, result, item, "", outcome.state)
        if outcome.invoices:
            recorded = json.dumps(
                [
                    IssuedDocument(document, DocumentOrigin.ACCOUNT_EVENT).record()
                    for document in outcome.invoices
                ]
            )
            org.new_invoices[event.event_id] = recorded
            result.outputs += self._invoice_messages(event.org_id, recorded)
        result.accepted += 1
        if isinstance(event, CreditsPurchased):
            org.balance_delta += event.data.amount
        org.state = outcome.state

    def _publish_outcome(
        self,
        org: _OrgBatch,
        result: BatchResult,
        item: _Parsed,
        rejection: str,
        state: OrgAccount | None,
    ) -> None:
        """The event's `account.outcomes.v1` record, kept with the batch's state so a
        replay publishes the same bytes. `state`: the org after it (before it, if refused)."""
        event, record = item.event, item.record
        value = encode_event(
            AccountOutcome(
                event=event,
                status="rejected" if rejection else "accepted",
                reason=rejection,
                plan=state.plan if state else None,
                billing_mode=state.billing_mode if state else None,
                received_at=record.received_at,
                source_partition=record.partition,
                source_offset=record.offset,
            )
        )
        org.new_outcomes[event.event_id] = value.decode()
        result.outputs.append(OutputMessage(self._topics.account_outcomes, event.org_id, value))

    def _invoice_messages(self, org_id: str, recorded: str | None) -> list[OutputMessage]:
        if recorded is None:
            return []
        return [
            OutputMessage(self._topics.documents, org_id, value.encode())
            for value in json.loads(recorded)
        ]

    async def _reevaluate(
        self, changed: dict[str, tuple[OrgAccount, SourceRecord]], result: BatchResult
    ) -> None:
        """A cap raised or credits bought lift blocks at once (R16): re-decide the stops
        and thresholds of each changed org for the month of the change."""
        if not changed:
            return
        read = self._redis.pipeline(transaction=False)
        months = {}
        for org_id, (_state, record) in changed.items():
            keys = OrgKeys(self._prefix, org_id)
            month = months[org_id] = month_of(record.received_at)
            read.hgetall(keys.spend(month))
            read.get(keys.balance)
            read.smembers(keys.stopped)
            read.smembers(keys.notified(month))
        started = perf_counter()
        replies = await read.execute()
        REDIS_READ_SPEND.observe(perf_counter() - started)
        for index, (org_id, (state, _record)) in enumerate(changed.items()):
            spend_hash, balance, stopped, notified = replies[4 * index : 4 * index + 4]
            month = months[org_id]
            # Every member, with the allowances of the month's first day (as the usage
            # path's); meta, members and caps from the account just folded.
            snapshot = OrgState.from_account(
                state, month, spend=spend_hash, balance=balance
            ).spend_snapshot(self._book, date.fromisoformat(f"{month}-01"))
            keys = OrgKeys(self._prefix, org_id)
            stops, resumes = due_stops_and_resumes(
                snapshot, {s.decode() for s in stopped}, usage_driven=False
            )
            thresholds = due_thresholds(snapshot, {n.decode() for n in notified})
            notified = notified_suffix(month)
            publish_due(self._topics, org_id, thresholds, result, op="sadd", suffix=notified)
            publish_due(self._topics, org_id, stops, result, op="sadd", suffix=STOPPED)
            publish_due(self._topics, org_id, resumes, result, op="srem", suffix=STOPPED)
