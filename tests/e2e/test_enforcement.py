"""Real-time enforcement end to end: events through Kafka, a real `metering worker`,
state in Redis, answers from the gate."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from metering.redis_clients import sync_client
from schemas.validation import InvalidEvent, Reason, parse_account_event
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import OWNER, account, new_org, spend, usage
from tests.helpers import run_metering

pytestmark = pytest.mark.stack


def test_user_cap_blocks_then_raising_it_resumes(pipeline: Pipeline) -> None:
    """A member with a 5.00 cap is stopped once their spend reaches 5.00 (not before),
    notified at 50/80/100 % once each; raising the cap lets them resume at once."""
    # Given a self-serve org with credits and a 5.00 cap on u1
    org = "org_cap"
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org(org), account(org, "spend_cap.set", {"user_id": "u1", "limit": "5.00"})
    )
    pipeline.wait_for_gate(org, "u1", None)

    # When u1 spends 4.00: still allowed, 50 % notified
    with pipeline.emitter() as emit:
        emit.emit_usage(spend(org, "u1", 4))
    pipeline.wait_for(lambda p: len(p.priced()) == 1)
    assert pipeline.gate(org, "u1") is None
    # …and 1.00 more reaches the cap exactly
    with pipeline.emitter() as emit:
        emit.emit_usage(spend(org, "u1", 1))
    pipeline.wait_for_gate(org, "u1", "user_cap_reached")
    assert pipeline.gate(org, "u2") is None  # others are not affected

    # Then each threshold was notified once, plus one stop
    pipeline.wait_for(
        lambda p: any(n["kind"] == "stopped" and n["user_id"] == "u1" for n in p.notifications())
    )
    kinds = Counter((n["kind"], n["user_id"], n["threshold"]) for n in pipeline.notifications())
    assert kinds == {
        ("threshold_reached", "u1", "0.5"): 1,
        ("threshold_reached", "u1", "0.8"): 1,
        ("threshold_reached", "u1", "1"): 1,
        ("stopped", "u1", None): 1,
    }

    # When the owner lifts the cap to unlimited, u1 resumes at once
    with pipeline.emitter() as emit:
        emit.emit_account(account(org, "spend_cap.set", {"user_id": "u1", "limit": None}))
    pipeline.wait_for_gate(org, "u1", None)
    pipeline.wait_for(
        lambda p: any(n["kind"] == "resumed" and n["user_id"] == "u1" for n in p.notifications())
    )


def test_credits_exhausted_then_a_purchase_resumes(pipeline: Pipeline) -> None:
    """Self-serve: the org's 10.00 of credits run out (an in-flight event takes the
    balance below zero); everyone stops; a purchase lets everyone resume."""
    org = "org_credits"
    pipeline.start_worker()
    pipeline.send_accounts(*new_org(org, credits="10.00"))
    pipeline.wait_for_gate(org, "u1", None)
    with pipeline.emitter() as emit:
        emit.emit_usage(spend(org, "u1", 6))
        emit.emit_usage(spend(org, "u2", 6))
    pipeline.wait_for_gate(org, "u1", "credits_exhausted")
    assert pipeline.gate(org, "u2") == "credits_exhausted"
    with pipeline.emitter() as emit:
        emit.emit_account(
            account(org, "credits.purchased", {"purchase_id": "pay-2", "amount": "1.00"})
        )
    # The 2.00 deficit is settled from the purchase: once it is applied (its offset
    # committed), the balance is still below zero, and both are still stopped.
    pipeline.wait_caught_up()
    assert pipeline.gate(org, "u1") == "credits_exhausted"
    assert pipeline.gate(org, "u2") == "credits_exhausted"
    with pipeline.emitter() as emit:
        emit.emit_account(
            account(org, "credits.purchased", {"purchase_id": "pay-3", "amount": "5.00"})
        )
    pipeline.wait_for_gate(org, "u1", None)
    assert pipeline.gate(org, "u2") is None

    # Balance alerts (R17): usage took the balance below 10.00 and below 1.00, once each
    # in that purchase cycle; purchases raise the balance and alert nothing.
    pipeline.wait_for(lambda p: len(balance_alerts(p)) >= 2)
    assert sorted(balance_alerts(pipeline)) == [("1.00", 1), ("10.00", 1)]


def balance_alerts(pipeline: Pipeline) -> list[tuple[str, int]]:
    return [
        (n["threshold"], int(n["notification_id"].rsplit(":", 1)[1]))
        for n in pipeline.notifications()
        if n["kind"] == "balance_low"
    ]


def test_org_cap_and_the_lower_of_two_caps(pipeline: Pipeline) -> None:
    """Sales-assisted: an org cap of 10.00 and a user cap of 20.00 — the org cap, the lower,
    stops everyone once the org's spend reaches it, until the next month begins."""
    org = "org_orgcap"
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org(org, mode="sales_assisted"),
        account(org, "spend_cap.set", {"user_id": None, "limit": "10.00"}),
        account(org, "spend_cap.set", {"user_id": "u1", "limit": "20.00"}),
    )
    pipeline.wait_for_gate(org, "u1", None)
    with pipeline.emitter() as emit:
        emit.emit_usage(spend(org, "u1", 7))
        emit.emit_usage(spend(org, "u2", 3))
    pipeline.wait_for_gate(org, "u1", "org_cap_reached")
    assert pipeline.gate(org, "u2") == "org_cap_reached"

    # Sales-assisted: the block lasts until the next billing period starts (R16)
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    assert pipeline.gate(org, "u1", at=next_month - timedelta(microseconds=1)) == "org_cap_reached"
    assert pipeline.gate(org, "u1", at=next_month) is None


def test_surface_and_seat_allowance(pipeline: Pipeline) -> None:
    """A standard seat (chat only, 25.00 of usage included) is refused claude_code, and
    is stopped when the allowance is used up; with extra usage enabled it goes on, billed."""
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org("org_std", plan="seat_based", mode="sales_assisted", seat="standard"),
        *new_org("org_extra", "seat_based", "sales_assisted", "standard", extra_usage=True),
    )
    pipeline.wait_for_gate("org_std", "u1", None)
    assert pipeline.gate("org_std", "u1", "claude_code") == "surface_not_in_seat"
    with pipeline.emitter() as emit:
        for org in ("org_std", "org_extra"):
            emit.emit_usage(spend(org, "u1", 20))
            emit.emit_usage(spend(org, "u1", 8))  # crosses the 25.00 allowance: 3.00 extra
    pipeline.wait_for(lambda p: len(p.priced()) == 4)
    pipeline.wait_for_gate("org_std", "u1", "seat_allowance_exhausted")
    assert pipeline.gate("org_extra", "u1") is None
    billed = {(e["event"]["org_id"], e["billed_nano_usd"]) for e in pipeline.priced()}
    assert billed == {
        ("org_std", 0),
        ("org_std", 3 * 10**9),
        ("org_extra", 0),
        ("org_extra", 3 * 10**9),
    }


def test_refused_account_changes_are_dead_lettered_and_change_nothing(pipeline: Pipeline) -> None:
    """A member setting a cap (R14) and a seat removal that would leave a member without
    a seat (R5) are refused with a reason; the member is not capped."""
    org = "org_refuse"
    pipeline.start_worker()
    member_claiming_owner = {"user_id": "u2", "role": "owner"}
    pipeline.send_accounts(
        *new_org(org),
        account(
            org, "spend_cap.set", {"user_id": "u1", "limit": "0.00"}, actor=member_claiming_owner
        ),
        account(org, "seats.removed", {"seat_type": "enterprise", "quantity": 1}, actor=OWNER),
    )
    pipeline.wait_for(lambda p: len(p.dead()) == 2)
    assert sorted(d["reason"] for d in pipeline.dead()) == ["not_permitted", "seat_removal_refused"]
    assert all(d["source_topic"] == pipeline.topics.account_events for d in pipeline.dead())
    assert pipeline.gate(org, "u1") is None


def test_duplicates_count_once_and_conflicts_are_dead_lettered(pipeline: Pipeline) -> None:
    """The same event sent 100 times is priced once; the same id with another payload is
    dead-lettered event_id_conflict; bad input of every class is dead-lettered with its
    reason; accepted + dead-lettered = produced."""
    org = "org_dupes"
    pipeline.start_worker()
    pipeline.send_accounts(*new_org(org, credits="1000.00"))
    pipeline.wait_for_gate(org, "u1", None)
    once = spend(org, "u1", 1, event_id="evt-same")
    conflict = {**once, "input_tokens": 5}
    last_month = datetime.now(UTC).replace(day=1) - timedelta(days=3)
    moved = {**once, "occurred_at": last_month.isoformat()}  # same id, another month
    with pipeline.emitter() as emit:
        for _ in range(100):
            emit.emit_usage(once)
        emit.emit_usage(conflict)
        emit.emit_usage(moved)
        emit.emit_usage(usage(org, "u1", input_tokens=10, model="gpt-unknown"))
        emit.emit_usage(usage("org_nobody", "u1", input_tokens=10))
        emit.emit_usage(usage(org, "stranger", input_tokens=1_000_000, model="claude-haiku-4-5"))
    bad = [b"{not json", b'{"event_id": "x"}', b"\xff\xfe", b'{"a": ' + b"1" * 20_000 + b"}"]
    pipeline.send_raw(pipeline.topics.usage_events, bad, key=org.encode())
    produced = 100 + 2 + 3 + len(bad)

    pipeline.wait_for(lambda p: len(p.priced()) == 2 and len(p.dead()) == 8)
    reasons = Counter(d["reason"] for d in pipeline.dead())
    assert reasons == {
        "event_id_conflict": 2,
        "unknown_model": 1,
        "unknown_org": 1,
        "malformed_json": 2,
        "missing_field": 1,
        "payload_too_large": 1,
    }
    duplicates = 99
    assert len(pipeline.priced()) + duplicates + len(pipeline.dead()) == produced
    assert {e["event"]["event_id"] for e in pipeline.priced()} >= {"evt-same"}
    # The stranger's usage is billed to the org, and the gate refuses the stranger.
    assert pipeline.gate(org, "stranger") == "unknown_member"
    letter = next(d for d in pipeline.dead() if d["reason"] == "malformed_json")
    assert letter["source_topic"] == pipeline.topics.usage_events
    assert isinstance(letter["source_offset"], int)


def test_usage_before_its_org_is_dead_lettered_and_redriven(pipeline: Pipeline) -> None:
    """Usage for an org not created yet is dead-lettered unknown_org; once the org exists,
    `metering deadletter redrive --reason unknown_org` brings it in, and a second re-drive
    does not count it twice."""
    org = "org_late"
    pipeline.start_worker()
    early = spend(org, "u1", 2)
    with pipeline.emitter() as emit:
        emit.emit_usage(early)
    pipeline.wait_for(lambda p: len(p.dead()) == 1)
    assert pipeline.dead()[0]["reason"] == "unknown_org"

    pipeline.send_accounts(*new_org(org, credits="10.00"))
    pipeline.wait_for_gate(org, "u1", None)
    for _ in range(2):
        result = run_metering("deadletter", "redrive", "--reason", "unknown_org", **pipeline.env())
        assert result.returncode == 0, result.stderr
    pipeline.wait_for(lambda p: len(p.priced()) == 1)
    pipeline.wait_caught_up()
    assert [e["event"]["event_id"] for e in pipeline.priced()] == [early["event_id"]]
    client = sync_client(pipeline.settings)
    balance = client.get(f"{pipeline.settings.redis_prefix}{{{org}}}:balance")
    assert balance is not None and int(balance) == 8 * 10**9  # 10.00 − 2.00, once
    client.close()


def test_usage_billing_cannot_be_switched_off(pipeline: Pipeline) -> None:
    """R13: nothing turns usage billing off. The contract has no field or event for it
    (refused `unknown_field` / `unknown_event_type`), and under every plan and billing
    mode, with every cap explicitly unlimited, each accepted event is billed: its whole
    cost on usage-based plans, everything beyond the seat's allowance on seat-based ones
    (with extra usage on)."""
    now = datetime.now(UTC)
    for raw, reason in (
        (
            {
                **account("org_x", "org.created", {"plan": "usage_based"}, actor=None),
                "data": {
                    "plan": "usage_based",
                    "billing_mode": "self_serve",
                    "term_start": "2026-01-01",
                    "seats": {},
                    "usage_billing": False,
                },
            },
            Reason.UNKNOWN_FIELD,
        ),
        (account("org_x", "usage_billing.disabled", {}), Reason.UNKNOWN_EVENT_TYPE),
    ):
        with pytest.raises(InvalidEvent) as refused:
            parse_account_event(raw, now=now)
        assert refused.value.reason is reason

    orgs = {
        "org_r13_ss": new_org("org_r13_ss", credits="1000.00"),
        "org_r13_sa": new_org("org_r13_sa", mode="sales_assisted", credits=None),
        "org_r13_seat": new_org(
            "org_r13_seat", "seat_based", "sales_assisted", "standard", extra_usage=True
        ),
    }
    unlimited = [
        account(org, "spend_cap.set", {"user_id": user, "limit": None})
        for org in orgs
        for user in (None, "u1")
    ]
    pipeline.start_worker()
    pipeline.send_accounts(*[e for events in orgs.values() for e in events], *unlimited)
    for org in orgs:
        pipeline.wait_for_gate(org, "u1", None)
    # 30.00 each: beyond the standard seat's 25.00 allowance by 5.00
    pipeline.send_usage(*(spend(org, "u1", 30) for org in orgs))
    pipeline.wait_for(lambda p: len(p.priced()) == len(orgs))
    billed = {
        e["event"]["org_id"]: (e["cost_nano_usd"], e["billed_nano_usd"]) for e in pipeline.priced()
    }
    usd = 10**9
    assert billed == {
        "org_r13_ss": (30 * usd, 30 * usd),
        "org_r13_sa": (30 * usd, 30 * usd),
        "org_r13_seat": (30 * usd, 5 * usd),
    }
