"""The account event contract (SPEC §4): one envelope, a `data` model per `type`."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from schemas.account import (
    ACCOUNT_EVENT_TYPES,
    BillingMode,
    CreditsPurchased,
    OrgCreated,
    Plan,
    Role,
    SeatType,
    SpendCapSet,
)
from schemas.validation import InvalidEvent, Reason, encode_event, parse_account_event

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)

# The types listed in SPEC §4, written out here rather than taken from the code.
SPEC_TYPES = {
    "org.created",
    "member.added",
    "member.removed",
    "member.updated",  # added by the project: role and seat changes, primary-owner transfer
    "seats.added",
    "seats.removed",
    "credits.purchased",
    "spend_cap.set",
    "contract.renewed",
    "plan.migration_requested",
    # added by the project (issue 17): where notifications are delivered
    "notification_endpoint.set",
    "notification_endpoint.removed",
    "notification_routing.set",
}

OWNER = {"user_id": "u_owner", "role": "primary_owner"}


def account_event(type_: str, data: dict[str, Any] | None, **envelope: Any) -> dict[str, Any]:
    """An account event as decoded wire JSON; `data=None` leaves the key out."""
    event: dict[str, Any] = {
        "event_id": f"acct_{type_.replace('.', '_')}",
        "type": type_,
        "org_id": "org_acme",
        "occurred_at": "2026-11-24T11:59:00.250+01:00",
        "actor": OWNER,
    }
    if data is not None:
        event["data"] = data
    return {**event, **envelope}


VALID_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "org.created": [
        account_event(
            "org.created",
            {
                "plan": "usage_based",
                "billing_mode": "self_serve",
                "term_start": "2026-01-01",
                "seats": {"enterprise": 50, "chat": 3},
            },
        ),
        account_event(
            "org.created",
            {
                "plan": "seat_based",
                "billing_mode": "sales_assisted",
                "term_start": "2026-03-15",
                "seats": {"standard": 20, "premium": 5},
                "extra_usage": True,
                "notification_thresholds": ["0.25", "0.9", "1"],
            },
            actor=None,
        ),
    ],
    "member.added": [
        account_event(
            "member.added", {"user_id": "u_42", "role": "member", "seat_type": "enterprise"}
        ),
        account_event(
            "member.added",
            {"user_id": "u_43", "role": "owner", "seat_type": "enterprise", "email": "a@b.example"},
        ),
    ],
    "member.removed": [
        account_event("member.removed", {"user_id": "u_42", "role": "admin", "seat_type": "chat"})
    ],
    "member.updated": [
        account_event(
            "member.updated", {"user_id": "u_42", "role": "owner", "seat_type": "enterprise"}
        )
    ],
    "seats.added": [account_event("seats.added", {"seat_type": "enterprise", "quantity": 10})],
    "seats.removed": [account_event("seats.removed", {"seat_type": "premium", "quantity": 1})],
    "credits.purchased": [
        account_event("credits.purchased", {"purchase_id": "pay_1", "amount": "1234.50"}),
        account_event("credits.purchased", {"purchase_id": "pay_2", "amount": "0.000000001"}),
    ],
    "spend_cap.set": [
        account_event("spend_cap.set", {"user_id": None, "limit": "5000"}),
        account_event("spend_cap.set", {"user_id": "u_42", "limit": "250.75"}),
        account_event("spend_cap.set", {"user_id": "u_42", "limit": None}),
        account_event("spend_cap.set", {"user_id": "u_42", "limit": "0"}),
    ],
    "contract.renewed": [
        account_event("contract.renewed", {"term_start": "2027-01-01"}, actor=None)
    ],
    "plan.migration_requested": [
        account_event("plan.migration_requested", {}),
        account_event("plan.migration_requested", None),
    ],
    "notification_endpoint.set": [
        account_event(
            "notification_endpoint.set",
            {"url": "https://hooks.example.com/metering?x=1", "secret_id": "0123abcd"},
        )
    ],
    "notification_endpoint.removed": [account_event("notification_endpoint.removed", {})],
    "notification_routing.set": [
        account_event(
            "notification_routing.set", {"webhook": ["stopped", "threshold_reached"], "email": []}
        )
    ],
}

ALL_VALID = [
    pytest.param(example, id=f"{type_}-{n}")
    for type_, examples in VALID_EXAMPLES.items()
    for n, example in enumerate(examples)
]


def test_every_spec_type_has_an_example_and_a_model() -> None:
    """The examples here cover every account event type of SPEC §4, and the schema
    knows exactly those types."""
    # Given the types listed in SPEC §4
    # When compared with the examples and the schema's types
    # Then all three agree
    assert set(VALID_EXAMPLES) == SPEC_TYPES
    assert set(ACCOUNT_EVENT_TYPES) == SPEC_TYPES


@pytest.mark.parametrize("raw", ALL_VALID)
def test_valid_event_round_trips_byte_identically(raw: dict[str, Any]) -> None:
    """Every account event type has a valid example whose canonical bytes survive
    encode → parse → encode unchanged."""
    # Given a valid account event on the wire
    wire = json.dumps(raw).encode()
    # When it is parsed, encoded, parsed and encoded again
    first = parse_account_event(wire, now=NOW)
    encoded = encode_event(first)
    second = parse_account_event(encoded, now=NOW)
    # Then the model and the bytes are unchanged by the second trip
    assert second == first
    assert encode_event(second) == encoded
    # And the canonical form keeps the type, the instant in UTC and the actor
    decoded = json.loads(encoded)
    assert decoded["type"] == raw["type"]
    assert decoded["occurred_at"] == "2026-11-24T10:59:00.250000Z"
    assert decoded["actor"] == raw["actor"]


def test_org_created_fields_are_read_and_defaults_applied() -> None:
    """org.created without optional fields gets extra_usage false and the default
    50/80/100% notification thresholds (R17)."""
    # Given a minimal usage-based org.created
    raw = VALID_EXAMPLES["org.created"][0]
    # When it is parsed
    event = parse_account_event(raw, now=NOW)
    # Then every field has the meaning sent, and the defaults are in place
    assert isinstance(event, OrgCreated)
    assert event.data.plan is Plan.USAGE_BASED
    assert event.data.billing_mode is BillingMode.SELF_SERVE
    assert event.data.term_start == date(2026, 1, 1)
    assert event.data.seats == {SeatType.ENTERPRISE: 50, SeatType.CHAT: 3}
    assert event.data.extra_usage is False
    assert event.data.notification_thresholds == (Decimal("0.5"), Decimal("0.8"), Decimal("1"))
    assert event.actor is not None
    assert event.actor.role is Role.PRIMARY_OWNER
    assert json.loads(encode_event(event))["data"]["notification_thresholds"] == [
        "0.5",
        "0.8",
        "1",
    ]


def test_credit_amount_is_held_in_nano_dollars_and_written_as_a_string() -> None:
    """A credit purchase of "1234.50" is 1_234_500_000_000 nano-dollars inside and a
    decimal string on the wire."""
    # Given a credits.purchased event for 1234.50 USD
    raw = VALID_EXAMPLES["credits.purchased"][0]
    # When it is parsed and encoded
    event = parse_account_event(raw, now=NOW)
    encoded = json.loads(encode_event(event))
    # Then the amount is an exact integer of nano-dollars, and a string on the wire
    assert isinstance(event, CreditsPurchased)
    assert event.data.amount == 1_234_500_000_000
    assert encoded["data"]["amount"] == "1234.50"


def test_spend_cap_limit_null_means_unlimited() -> None:
    """spend_cap.set with `limit: null` is an unlimited cap (None), not a missing one."""
    # Given a per-user cap set to null and an org cap (user_id null) set to 5000
    unlimited = VALID_EXAMPLES["spend_cap.set"][2]
    org_cap = VALID_EXAMPLES["spend_cap.set"][0]
    # When both are parsed
    user_event = parse_account_event(unlimited, now=NOW)
    org_event = parse_account_event(org_cap, now=NOW)
    # Then the user's limit is None (unlimited), and the org cap is 5000 USD for user None
    assert isinstance(user_event, SpendCapSet)
    assert user_event.data.user_id == "u_42"
    assert user_event.data.limit is None
    assert json.loads(encode_event(user_event))["data"]["limit"] is None
    assert isinstance(org_event, SpendCapSet)
    assert org_event.data.user_id is None
    assert org_event.data.limit == 5_000_000_000_000


ORG = {
    "plan": "usage_based",
    "billing_mode": "self_serve",
    "term_start": "2026-01-01",
    "seats": {"enterprise": 5},
}
SEAT_ORG = {**ORG, "plan": "seat_based", "seats": {"standard": 5}}

BAD_EVENTS = [
    pytest.param(
        account_event("org.deleted", {}), Reason.UNKNOWN_EVENT_TYPE, None, id="unknown-type"
    ),
    pytest.param(
        account_event("Org.Created", ORG), Reason.UNKNOWN_EVENT_TYPE, None, id="type-case"
    ),
    # Money as a JSON number
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": 100}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-int",
    ),
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": 100.5}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-float",
    ),
    pytest.param(
        account_event("spend_cap.set", {"user_id": None, "limit": 100}),
        Reason.INVALID_MONEY,
        "data.limit",
        id="limit-int",
    ),
    # Money strings that are not amounts
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": "-1"}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-negative",
    ),
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": "1.0000000001"}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-10-decimals",
    ),
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": "0"}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-zero",
    ),
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": "0.00"}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-zero-cents",
    ),
    pytest.param(
        account_event("credits.purchased", {"purchase_id": "p1", "amount": "1e3"}),
        Reason.INVALID_MONEY,
        "data.amount",
        id="amount-exponent",
    ),
    pytest.param(
        account_event("spend_cap.set", {"user_id": None, "limit": "-5"}),
        Reason.INVALID_MONEY,
        "data.limit",
        id="limit-negative",
    ),
    # Required fields
    pytest.param(
        account_event("spend_cap.set", {"user_id": "u_42"}),
        Reason.MISSING_FIELD,
        "data.limit",
        id="limit-missing",
    ),
    pytest.param(
        account_event("credits.purchased", {"amount": "10"}),
        Reason.MISSING_FIELD,
        "data.purchase_id",
        id="purchase_id-missing",
    ),
    pytest.param(
        account_event("seats.added", None),
        Reason.MISSING_FIELD,
        "data",
        id="data-missing",
    ),
    pytest.param(
        {k: v for k, v in account_event("contract.renewed", {}).items() if k != "actor"},
        Reason.MISSING_FIELD,
        "actor",
        id="actor-missing",
    ),
    pytest.param(
        account_event("seats.added", {"seat_type": "enterprise", "quantity": 1, "note": "x"}),
        Reason.UNKNOWN_FIELD,
        "data.note",
        id="data-unknown-field",
    ),
    pytest.param(
        account_event("plan.migration_requested", {"to": "usage_based"}),
        Reason.UNKNOWN_FIELD,
        "data.to",
        id="no-data-expected",
    ),
    # org.created rules
    pytest.param(
        account_event("org.created", {**ORG, "seats": {"enterprise": 5, "standard": 2}}),
        Reason.SCHEMA_VIOLATION,
        "data",
        id="legacy-seat-on-usage-plan",
    ),
    pytest.param(
        account_event("org.created", {**SEAT_ORG, "seats": {"enterprise": 5}}),
        Reason.SCHEMA_VIOLATION,
        "data",
        id="enterprise-seat-on-seat-plan",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "extra_usage": True}),
        Reason.SCHEMA_VIOLATION,
        "data",
        id="extra-usage-on-usage-plan",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "notification_thresholds": ["0.5", "0.8", "0.5"]}),
        Reason.SCHEMA_VIOLATION,
        "data",
        id="duplicate-thresholds",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "notification_thresholds": ["0.5", "0.50"]}),
        Reason.SCHEMA_VIOLATION,
        "data",
        id="duplicate-thresholds-spelled-differently",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "notification_thresholds": ["0"]}),
        Reason.SCHEMA_VIOLATION,
        "data.notification_thresholds.0",
        id="threshold-zero",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "notification_thresholds": ["1.5"]}),
        Reason.SCHEMA_VIOLATION,
        "data.notification_thresholds.0",
        id="threshold-above-one",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "notification_thresholds": []}),
        Reason.SCHEMA_VIOLATION,
        "data.notification_thresholds",
        id="thresholds-empty",
    ),
    pytest.param(
        account_event("org.created", {**ORG, "plan": "free"}),
        Reason.SCHEMA_VIOLATION,
        "data.plan",
        id="unknown-plan",
    ),
    # Other data fields
    pytest.param(
        account_event("seats.added", {"seat_type": "enterprise", "quantity": 0}),
        Reason.SCHEMA_VIOLATION,
        "data.quantity",
        id="zero-seats",
    ),
    pytest.param(
        account_event("seats.added", {"seat_type": "gold", "quantity": 1}),
        Reason.SCHEMA_VIOLATION,
        "data.seat_type",
        id="unknown-seat-type",
    ),
    pytest.param(
        account_event("member.added", {"user_id": "u 42", "role": "member", "seat_type": "chat"}),
        Reason.INVALID_ID,
        "data.user_id",
        id="bad-member-id",
    ),
    pytest.param(
        account_event("member.added", {"user_id": "u_42", "role": "boss", "seat_type": "chat"}),
        Reason.SCHEMA_VIOLATION,
        "data.role",
        id="unknown-role",
    ),
    pytest.param(
        account_event("contract.renewed", {"term_start": "2027-01-01"}, org_id="{org}"),
        Reason.INVALID_ID,
        "org_id",
        id="bad-org-id",
    ),
    pytest.param(
        account_event("contract.renewed", {"term_start": "2027-01-01"}, occurred_at="2026-11-24"),
        Reason.NAIVE_TIMESTAMP,
        "occurred_at",
        id="naive-occurred_at",
    ),
    pytest.param(
        account_event(
            "contract.renewed", {"term_start": "2027-01-01"}, occurred_at="2026-12-01T00:00:00Z"
        ),
        Reason.FUTURE_EVENT,
        "occurred_at",
        id="future-event",
    ),
    # Dates every store can hold (ClickHouse Date ends in 2149): 2000-01-01 – 2099-12-31.
    pytest.param(
        account_event("org.created", {**ORG, "term_start": "9999-12-31"}),
        Reason.DATE_OUT_OF_RANGE,
        "data.term_start",
        id="term-start-year-9999",
    ),
    pytest.param(
        account_event("contract.renewed", {"term_start": "1999-12-31"}),
        Reason.DATE_OUT_OF_RANGE,
        "data.term_start",
        id="renewal-before-2000",
    ),
    pytest.param(
        account_event(
            "member.added",
            {"user_id": "u", "role": "owner", "seat_type": "enterprise", "email": "not-an-address"},
        ),
        Reason.SCHEMA_VIOLATION,
        "data.email",
        id="member-email-invalid",
    ),
    pytest.param(
        account_event("notification_endpoint.set", {"url": "ftp://x.example/", "secret_id": "s"}),
        Reason.SCHEMA_VIOLATION,
        "data.url",
        id="endpoint-not-http",
    ),
    pytest.param(
        account_event(
            "notification_endpoint.set", {"url": "https://u:p@x.example/", "secret_id": "s"}
        ),
        Reason.SCHEMA_VIOLATION,
        "data.url",
        id="endpoint-with-credentials",
    ),
    pytest.param(
        account_event("notification_routing.set", {"webhook": ["sometimes"], "email": []}),
        Reason.SCHEMA_VIOLATION,
        "data.webhook.0",
        id="routing-unknown-kind",
    ),
    pytest.param(
        account_event("org.created", ORG, occurred_at="1970-01-01T00:00:00Z"),
        Reason.DATE_OUT_OF_RANGE,
        "occurred_at",
        id="occurred-at-1970",
    ),
    pytest.param(  # past Python's calendar once in UTC: a reason, never an OverflowError
        account_event("org.created", ORG, occurred_at="9999-12-31T23:30:00-01:00"),
        Reason.DATE_OUT_OF_RANGE,
        "occurred_at",
        id="occurred-at-past-year-9999-in-utc",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "field"), BAD_EVENTS)
def test_bad_account_event_has_a_specific_reason(
    raw: dict[str, Any], reason: Reason, field: str | None
) -> None:
    """A bad account event is refused with the specific reason code, and a nested field
    is named by its path inside the event (`data.amount`), without the type tag."""
    # Given an account event that is wrong in one way
    # When it is parsed
    with pytest.raises(InvalidEvent) as caught:
        parse_account_event(raw, now=NOW)
    # Then the reason is the specific one, and the field is the path inside the event
    assert caught.value.reason is reason
    if field is not None:
        assert caught.value.field == field
        assert caught.value.field is not None
        assert not caught.value.field.startswith(raw["type"])


def test_money_as_a_json_number_is_refused_from_bytes_too() -> None:
    """Raw wire bytes with `"amount": 100` are refused (`invalid_money`), never read as
    100 nano-dollars or 100 dollars."""
    # Given wire bytes with a numeric amount
    wire = b'{"event_id": "acct_1", "type": "credits.purchased", "org_id": "org_acme",'
    wire += b' "occurred_at": "2026-11-24T12:00:00Z", "actor": null,'
    wire += b' "data": {"purchase_id": "pay_1", "amount": 100}}'
    # When they are parsed
    with pytest.raises(InvalidEvent) as caught:
        parse_account_event(wire, now=NOW)
    # Then the amount is refused as money, at data.amount
    assert caught.value.reason is Reason.INVALID_MONEY
    assert caught.value.field == "data.amount"
    assert caught.value.detail.startswith("data.amount: ")


def test_python_construction_takes_nano_dollars() -> None:
    """In Python, money fields take int nano-dollars directly; a negative one is refused."""
    # Given a credits purchase built in Python with 2.5 USD in nano-dollars
    fields: dict[str, Any] = {
        "event_id": "acct_1",
        "type": "credits.purchased",
        "org_id": "org_acme",
        "occurred_at": NOW,
        "actor": None,
        "data": {"purchase_id": "pay_1", "amount": 2_500_000_000},
    }
    # When it is built and encoded
    event = CreditsPurchased(**fields)
    # Then it is 2.50 on the wire; and a negative amount is refused
    assert json.loads(encode_event(event))["data"]["amount"] == "2.50"
    with pytest.raises(ValueError, match="must not be negative"):
        CreditsPurchased(**{**fields, "data": {"purchase_id": "pay_1", "amount": -1}})
