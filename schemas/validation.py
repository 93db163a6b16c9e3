"""Turning raw bytes into events, and every way that can fail into a stable reason code.

The reason codes are part of the public contract: the dead-letter topic carries them,
dashboards count them and operators re-drive by them. Add codes; never rename one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from schemas.account import ACCOUNT_EVENT_ADAPTER, ACCOUNT_EVENT_TYPES, AccountEvent
from schemas.usage import USAGE_TOKEN_FIELDS, UsageEvent

_E = TypeVar("_E", UsageEvent, AccountEvent)

# A usage event is ~350 bytes; 16 KiB leaves room for long ids and still refuses
# anything that is obviously not one event.
MAX_EVENT_BYTES = 16 * 1024
# Clocks drift; more than this ahead of ours and the event is not "now" but wrong (G4).
MAX_CLOCK_SKEW = timedelta(minutes=5)


class Reason(StrEnum):
    """Why an event was refused. Found by the schemas unless noted otherwise."""

    MALFORMED_JSON = "malformed_json"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    SCHEMA_VIOLATION = "schema_violation"
    INVALID_ID = "invalid_id"
    NEGATIVE_TOKENS = "negative_tokens"
    TOKENS_OUT_OF_RANGE = "tokens_out_of_range"
    NAIVE_TIMESTAMP = "naive_timestamp"
    FUTURE_EVENT = "future_event"
    UNKNOWN_SURFACE = "unknown_surface"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    INVALID_MONEY = "invalid_money"
    DATE_OUT_OF_RANGE = "date_out_of_range"  # a date or timestamp outside 2000–2099
    # Decided with more than the event in hand:
    UNKNOWN_MODEL = "unknown_model"  # the price book has no rate in force (billing.pricing)
    UNKNOWN_ORG = "unknown_org"  # no org.created seen yet (usage processor)
    # occurred_at more than METERING_MAX_EVENT_AGE_DAYS before the record's append time,
    # or in a month whose de-duplication marks are gone (usage processor)
    EVENT_TOO_OLD = "event_too_old"
    EVENT_ID_CONFLICT = "event_id_conflict"  # same event_id, different payload (processor)
    INVALID_PRICED_RECORD = "invalid_priced_record"  # usage.priced.v1 not written by us (sink)
    INVALID_DOCUMENT_RECORD = "invalid_document_record"  # billing.documents.v1 likewise
    INVALID_OUTCOME_RECORD = "invalid_outcome_record"  # account.outcomes.v1 likewise
    # A counter would pass its bound (schemas.money), or one event costs more than one may
    # (usage processor); nothing was counted.
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    # Redis refused the enforcement script for this record (e.g. a key of the wrong type);
    # nothing was counted, the rest of the batch went on (usage processor).
    ENFORCEMENT_FAILED = "enforcement_failed"
    # ClickHouse (or its client) refused this record's row; the rest of the batch is
    # stored (sink).
    UNSTORABLE_RECORD = "unstorable_record"
    # A notification deliveries record the sink cannot read.
    INVALID_DELIVERY_RECORD = "invalid_delivery_record"


class InvalidEvent(ValueError):
    """An event that cannot be accepted, with the reason code and a readable detail."""

    def __init__(self, reason: Reason, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field


_TYPE_REASONS = {
    "json_invalid": Reason.MALFORMED_JSON,
    "json_type": Reason.MALFORMED_JSON,
    "missing": Reason.MISSING_FIELD,
    "extra_forbidden": Reason.UNKNOWN_FIELD,
    "timezone_aware": Reason.NAIVE_TIMESTAMP,
    "invalid_money": Reason.INVALID_MONEY,
    "date_out_of_range": Reason.DATE_OUT_OF_RANGE,
    "union_tag_invalid": Reason.UNKNOWN_EVENT_TYPE,
    "string_pattern_mismatch": Reason.INVALID_ID,
    "string_too_long": Reason.INVALID_ID,
    "string_too_short": Reason.INVALID_ID,
}
_TOKEN_BOUND_REASONS = {
    "greater_than_equal": Reason.NEGATIVE_TOKENS,
    "less_than_equal": Reason.TOKENS_OUT_OF_RANGE,
}


def _reason_for(error: Mapping[str, Any]) -> Reason:
    kind = error["type"]
    field = error["loc"][-1] if error["loc"] else None
    if field in USAGE_TOKEN_FIELDS and kind in _TOKEN_BOUND_REASONS:
        return _TOKEN_BOUND_REASONS[kind]
    if field == "surface" and kind == "enum":
        return Reason.UNKNOWN_SURFACE
    return _TYPE_REASONS.get(kind, Reason.SCHEMA_VIOLATION)


def _field_of(error: Mapping[str, Any]) -> str:
    loc = error["loc"]
    # A discriminated union puts the `type` tag first (`credits.purchased.data.amount`);
    # the reader wants the field path inside the event.
    if loc and loc[0] in ACCOUNT_EVENT_TYPES:
        loc = loc[1:]
    return ".".join(str(part) for part in loc) or "(event)"


def invalid_event_from(exc: ValidationError) -> InvalidEvent:
    """The first error decides the reason; the detail lists every error found."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    detail = "; ".join(f"{_field_of(e)}: {e['msg']}" for e in errors)
    return InvalidEvent(_reason_for(first), detail[:1000], _field_of(first))


def _wire_bytes(raw: bytes | str | Mapping[str, Any]) -> bytes:
    """The event as wire bytes, size-checked. A mapping is taken as decoded wire JSON and
    held to the wire rules (money as strings, zoned timestamps): `{"amount": 100}` must not
    quietly mean 100 nano-dollars."""
    if isinstance(raw, Mapping):
        raw = to_json(raw)
    elif isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            Reason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit"
        )
    return raw


def _check_not_future(occurred_at: datetime, now: datetime) -> None:
    if occurred_at > now + MAX_CLOCK_SKEW:
        raise InvalidEvent(
            Reason.FUTURE_EVENT,
            f"occurred_at {occurred_at.isoformat()} is more than "
            f"{int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes after {now.isoformat()}",
            "occurred_at",
        )


def _parse(
    raw: bytes | str | Mapping[str, Any], validate: Callable[[bytes], _E], now: datetime
) -> _E:
    wire = _wire_bytes(raw)
    try:
        event = validate(wire)
    except ValidationError as exc:
        raise invalid_event_from(exc) from None
    _check_not_future(event.occurred_at, now)
    return event


def parse_usage_event(raw: bytes | str | Mapping[str, Any], *, now: datetime) -> UsageEvent:
    """Validate a usage event from wire bytes (or a mapping of decoded wire JSON).

    `now` is injected so that the future-event check is deterministic in tests and replays.
    Raises `InvalidEvent`.
    """
    return _parse(raw, UsageEvent.model_validate_json, now)


def parse_account_event(raw: bytes | str | Mapping[str, Any], *, now: datetime) -> AccountEvent:
    """Validate an account event (any `type` of SPEC §4). Raises `InvalidEvent`."""
    return _parse(raw, ACCOUNT_EVENT_ADAPTER.validate_json, now)


def encode_event(event: BaseModel) -> bytes:
    """Canonical wire bytes: every field present, UTC `Z` timestamps, money as strings."""
    return event.model_dump_json().encode()
