"""Where notifications go, as account state (billing.accounts): the webhook endpoint,
the kinds routed to webhook and email, and members' email addresses — set by owners
(R14) and carried through every change a member or the plan goes through."""

from __future__ import annotations

from billing.account_state import ALL_KINDS, WebhookEndpoint
from billing.accounts import AccountRejection, OrgAccount, Rejected
from schemas.account import SeatType
from schemas.outputs import NotificationKind
from tests.billing.test_account_fold import event, fold, org

ENDPOINT = {"url": "https://hooks.example.com/in", "secret_id": "s1"}


def test_owners_set_and_remove_the_endpoint_and_route_kinds() -> None:
    state = fold(*org(), event("notification_endpoint.set", ENDPOINT))
    assert isinstance(state, OrgAccount)
    assert state.webhook == WebhookEndpoint("https://hooks.example.com/in", "s1")
    assert state.webhook_kinds == state.email_kinds == ALL_KINDS  # every kind by default
    routed = fold(
        *org(),
        event("notification_endpoint.set", ENDPOINT),
        event("notification_routing.set", {"webhook": ["stopped", "stopped"], "email": []}),
        event("notification_endpoint.removed", {}),
    )
    assert isinstance(routed, OrgAccount)
    assert routed.webhook is None
    assert (routed.webhook_kinds, routed.email_kinds) == ((NotificationKind.STOPPED,), ())


def test_members_and_admins_may_not_say_where_notifications_go() -> None:
    for actor in ({"user_id": "m", "role": "member"}, {"user_id": "a", "role": "owner"}):
        for kind, data in (
            ("notification_endpoint.set", ENDPOINT),
            ("notification_endpoint.removed", {}),
            ("notification_routing.set", {"webhook": [], "email": []}),
        ):
            result = fold(*org(), event(kind, data, actor))
            assert isinstance(result, Rejected) and result.reason is AccountRejection.NOT_PERMITTED


def test_an_email_stays_with_the_member_through_updates_and_a_migration() -> None:
    added = event(
        "member.added",
        {"user_id": "o", "role": "owner", "seat_type": "standard", "email": "o@example.com"},
        None,
    )
    promoted = event("member.updated", {"user_id": "o", "role": "owner", "seat_type": "premium"})
    state = fold(
        *org(plan="seat_based", seat="standard", seats=4),
        event("seats.added", {"seat_type": "premium", "quantity": 1}),
        added,
        promoted,
        event("plan.migration_requested", {}),
    )
    assert isinstance(state, OrgAccount)
    member = state.members["o"]
    assert (member.seat, member.email) == (SeatType.ENTERPRISE, "o@example.com")
    changed = fold(
        *org(),
        event(
            "member.updated",
            {"user_id": "m", "role": "member", "seat_type": "enterprise", "email": "m@example.com"},
        ),
    )
    assert isinstance(changed, OrgAccount) and changed.members["m"].email == "m@example.com"


def test_a_rotation_keeps_the_previous_secret_for_the_overlap() -> None:
    moved = {"url": "https://hooks.example.com/new", "secret_id": "s1"}
    rotated = {"url": "https://hooks.example.com/new", "secret_id": "s2"}
    state = fold(
        *org(),
        event("notification_endpoint.set", ENDPOINT),
        event("notification_endpoint.set", moved, at="2026-11-02T00:00:00Z"),
    )
    assert isinstance(state, OrgAccount) and state.webhook is not None
    assert (state.webhook.secret_id, state.webhook.previous_secret_id) == ("s1", None)
    state = fold(
        *org(),
        event("notification_endpoint.set", ENDPOINT),
        event("notification_endpoint.set", rotated, at="2026-11-03T00:00:00Z"),
    )
    assert isinstance(state, OrgAccount) and state.webhook is not None
    assert state.webhook == WebhookEndpoint(
        "https://hooks.example.com/new", "s2", "s1", "2026-11-03T00:00:00+00:00"
    )
