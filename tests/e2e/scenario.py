"""Builders for account and usage events used by the end-to-end tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

_ids = itertools.count()
OWNER = {"user_id": "owner", "role": "primary_owner"}


def account(
    org: str,
    kind: str,
    data: dict[str, Any],
    actor: dict[str, str] | None = OWNER,
    at: datetime | None = None,
) -> dict[str, Any]:
    moment = at or datetime.now(UTC) - timedelta(minutes=1)
    return {
        "event_id": f"acct-{org}-{next(_ids)}",
        "type": kind,
        "org_id": org,
        "occurred_at": moment.isoformat(),
        "actor": actor,
        "data": data,
    }


def new_org(
    org: str,
    plan: str = "usage_based",
    mode: str = "self_serve",
    seat: str = "enterprise",
    members: tuple[str, ...] = ("u1", "u2"),
    extra_usage: bool = False,
    credits: str | None = "100.00",
    at: datetime | None = None,
    spare_seats: int = 0,
) -> list[dict[str, Any]]:
    """org.created with a seat for the primary owner and each of `members` (plus
    `spare_seats`), the members, and (self-serve) a credit purchase; all at `at`
    (default: a minute ago), the term starting on the first of its month."""
    day = (at or datetime.now(UTC)).date()
    events = [
        account(
            org,
            "org.created",
            {
                "plan": plan,
                "billing_mode": mode,
                "term_start": day.replace(day=1).isoformat(),
                "seats": {seat: len(members) + 1 + spare_seats},
                "extra_usage": extra_usage,
            },
            actor=None,
            at=at,
        ),
        account(
            org,
            "member.added",
            {"user_id": "owner", "role": "primary_owner", "seat_type": seat},
            actor=None,
            at=at,
        ),
    ]
    events += [
        account(
            org,
            "member.added",
            {"user_id": u, "role": "member", "seat_type": seat},
            actor=None,
            at=at,
        )
        for u in members
    ]
    if credits is not None and mode == "self_serve":
        events.append(
            account(
                org,
                "credits.purchased",
                {"purchase_id": f"pay-{org}-0", "amount": credits},
                at=at,
            )
        )
    return events


def usage(
    org: str,
    user: str,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    model: str = "claude-sonnet-4-5",
    surface: str = "chat_web",
    event_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    moment = at or datetime.now(UTC) - timedelta(seconds=30)
    return {
        "event_id": event_id or f"use-{org}-{next(_ids)}",
        "org_id": org,
        "user_id": user,
        "surface": surface,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "occurred_at": moment.isoformat(),
    }


def spend(org: str, user: str, usd: int, **kw: Any) -> dict[str, Any]:
    """A usage event costing exactly `usd` dollars: Haiku output is $5 per million tokens."""
    return usage(org, user, model="claude-haiku-4-5", output_tokens=usd * 200_000, **kw)
