"""Kafka records → ClickHouse rows (pure conversions, no I/O)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from metering.enforcement.records import SourceRecord
from schemas.account import (
    AccountOutcome,
    CreditsPurchased,
    MemberAdded,
    MemberRemoved,
    SeatsAdded,
    SeatsRemoved,
    SpendCapSet,
)

USAGE_COLUMNS = (
    "event_id",
    "org_id",
    "user_id",
    "surface",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_nano_usd",
    "included_nano_usd",
    "billed_nano_usd",
    "price_version",
    "occurred_at",
    "priced_at",
    "source_partition",
    "source_offset",
    "priced_partition",
    "priced_offset",
)

ACCOUNT_COLUMNS = (
    "event_id",
    "org_id",
    "type",
    "occurred_at",
    "actor_user_id",
    "actor_role",
    "data",
    "status",
    "reason",
    "user_id",
    "seat_type",
    "quantity",
    "amount_nano_usd",
    "cap_nano_usd",
    "plan",
    "billing_mode",
    "received_at",
    "source_partition",
    "source_offset",
)


class BadPricedRecord(ValueError):
    """A usage.priced.v1 record that is not a PricedUsage (only a foreign writer makes one)."""


def usage_row(record: SourceRecord) -> tuple[Any, ...]:
    """One `usage_events` row from a `usage.priced.v1` value (our own JSON, so read with
    json rather than a full pydantic validation: this is the sink's hot path)."""
    try:
        priced = json.loads(record.value or b"")
        event = priced["event"]
        return (
            str(event["event_id"]),
            str(event["org_id"]),
            str(event["user_id"]),
            str(event["surface"]),
            str(event["model"]),
            int(event["input_tokens"]),
            int(event["output_tokens"]),
            int(event["cache_creation_input_tokens"]),
            int(event["cache_read_input_tokens"]),
            int(priced["cost_nano_usd"]),
            int(priced["included_nano_usd"]),
            int(priced["billed_nano_usd"]),
            date.fromisoformat(priced["price_version"]),
            datetime.fromisoformat(event["occurred_at"]),
            record.received_at,
            int(priced["source_partition"]),
            int(priced["source_offset"]),
            record.partition,
            record.offset,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadPricedRecord(f"not a priced usage record: {exc}") from exc


class BadOutcomeRecord(ValueError):
    """An account.outcomes.v1 record that is not an AccountOutcome (only a foreign writer
    makes one)."""


def outcome_row(record: SourceRecord) -> tuple[Any, ...]:
    """The `account_events` row of an `account.outcomes.v1` record."""
    try:
        outcome = AccountOutcome.model_validate_json(record.value or b"")
    except ValidationError as exc:
        raise BadOutcomeRecord(str(exc).splitlines()[0]) from exc
    return account_row(outcome)


def account_row(outcome: AccountOutcome) -> tuple[Any, ...]:
    """One `account_events` row: the event, its outcome and the org's plan after it."""
    event = outcome.event
    data = event.data
    user_id = seat_type = quantity = amount = cap = None
    if isinstance(event, MemberAdded | MemberRemoved):
        user_id, seat_type = event.data.user_id, event.data.seat_type.value
    elif isinstance(event, SeatsAdded | SeatsRemoved):
        seat_type, quantity = event.data.seat_type.value, event.data.quantity
    elif isinstance(event, CreditsPurchased):
        amount = event.data.amount
    elif isinstance(event, SpendCapSet):
        user_id, cap = event.data.user_id, event.data.limit
    return (
        event.event_id,
        event.org_id,
        event.type,
        event.occurred_at,
        event.actor.user_id if event.actor else None,
        event.actor.role.value if event.actor else None,
        data.model_dump_json(),
        outcome.status,
        outcome.reason,
        user_id,
        seat_type,
        quantity,
        amount,
        cap,
        outcome.plan.value if outcome.plan else None,
        outcome.billing_mode.value if outcome.billing_mode else None,
        outcome.received_at,
        outcome.source_partition,
        outcome.source_offset,
    )


def event_from_row(stored: Sequence[Any]) -> dict[str, Any]:
    """The wire form of a stored account event, to be validated back into the model.
    `stored`: event_id, org_id, type, occurred_at, actor_user_id, actor_role, data."""
    event_id, org_id, type_, occurred_at, actor_user_id, actor_role, data = stored
    return {
        "event_id": event_id,
        "type": type_,
        "org_id": org_id,
        "occurred_at": occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": {"user_id": actor_user_id, "role": actor_role} if actor_user_id else None,
        "data": json.loads(data),
    }
