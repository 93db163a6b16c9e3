"""A seeded generator of realistic account and usage events, for the demo and benchmarks.

Same seed, same events, byte for byte: ids and timestamps derive from the seed and the
given period, never from the wall clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.account import BillingMode, Plan, Role, SeatType

# Model mix of a typical enterprise: mostly Sonnet, Haiku for quick tasks, some Opus.
MODEL_WEIGHTS = {
    "claude-sonnet-4-5": 60,
    "claude-haiku-4-5": 20,
    "claude-opus-4-5": 15,
    "claude-opus-4-1": 5,
}
SURFACE_WEIGHTS = {
    "chat_web": 30,
    "chat_desktop": 15,
    "chat_mobile": 10,
    "claude_code": 35,
    "cowork": 10,
}
SEAT_FOR_PLAN = {Plan.USAGE_BASED: SeatType.ENTERPRISE, Plan.SEAT_BASED: SeatType.STANDARD}


@dataclass(frozen=True)
class OrgProfile:
    org_id: str
    plan: Plan
    billing_mode: BillingMode
    members: tuple[str, ...]


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TrafficGenerator:
    def __init__(self, seed: int, orgs: int, members_per_org: int, start: datetime) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.start = start
        combos = [(plan, mode) for plan in Plan for mode in BillingMode]
        self.orgs = [
            OrgProfile(
                org_id=f"org_{seed}_{index:04d}",
                plan=combos[index % len(combos)][0],
                billing_mode=combos[index % len(combos)][1],
                members=tuple(f"u_{index:04d}_{m:03d}" for m in range(members_per_org)),
            )
            for index in range(orgs)
        ]

    def account_events(self) -> Iterator[dict[str, Any]]:
        """org.created, member.added for every member, credits for self-serve orgs, and
        spend caps on some."""
        at = _stamp(self.start)
        for org_index, org in enumerate(self.orgs):
            seat = SEAT_FOR_PLAN[org.plan]
            owner = org.members[0]
            yield {
                "event_id": f"acct_{org.org_id}_created",
                "type": "org.created",
                "org_id": org.org_id,
                "occurred_at": at,
                "actor": None,
                "data": {
                    "plan": org.plan.value,
                    "billing_mode": org.billing_mode.value,
                    "term_start": self.start.date().replace(day=1).isoformat(),
                    "seats": {seat.value: len(org.members)},
                },
            }
            for index, user in enumerate(org.members):
                role = Role.PRIMARY_OWNER if index == 0 else Role.MEMBER
                yield {
                    "event_id": f"acct_{org.org_id}_member_{user}",
                    "type": "member.added",
                    "org_id": org.org_id,
                    "occurred_at": at,
                    # Provisioned by the system (as SCIM would): a new org has no owner
                    # yet who could add members (R14 applies to membership).
                    "actor": None,
                    "data": {"user_id": user, "role": role.value, "seat_type": seat.value},
                }
            actor = {"user_id": owner, "role": Role.PRIMARY_OWNER.value}
            if org.billing_mode is BillingMode.SELF_SERVE:
                # Every fifth self-serve org bought too little: it runs out of credits.
                amount = "10.00" if org_index % 5 == 0 else "500.00"
                yield {
                    "event_id": f"acct_{org.org_id}_credits_1",
                    "type": "credits.purchased",
                    "org_id": org.org_id,
                    "occurred_at": at,
                    "actor": actor,
                    "data": {"purchase_id": f"pay_{org.org_id}_1", "amount": amount},
                }
            # Spend controls (R14): an org cap on every third org, a tight user cap on
            # every fourth org's second member.
            if org_index % 3 == 0:
                yield self._cap(org, None, "15.00", at, actor)
            if org_index % 4 == 0 and len(org.members) > 1:
                yield self._cap(org, org.members[1], "2.00", at, actor)

    @staticmethod
    def _cap(
        org: OrgProfile, user_id: str | None, limit: str, at: str, actor: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "event_id": f"acct_{org.org_id}_cap_{user_id or 'org'}",
            "type": "spend_cap.set",
            "org_id": org.org_id,
            "occurred_at": at,
            "actor": actor,
            "data": {"user_id": user_id, "limit": limit},
        }

    def usage_events(
        self,
        count: int,
        span: timedelta,
        id_prefix: str = "evt",
        start: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """`count` usage events spread over `span` from `start` (default: the generator's),
        in time order; ids are `<id_prefix>_<seed>_<n>`."""
        first = start or self.start
        models, model_weights = zip(*MODEL_WEIGHTS.items(), strict=True)
        surfaces, surface_weights = zip(*SURFACE_WEIGHTS.items(), strict=True)
        step = span / max(count, 1)
        for index in range(count):
            org = self.orgs[self.rng.randrange(len(self.orgs))]
            input_tokens = int(self.rng.lognormvariate(7.5, 1.0))
            yield {
                "event_id": f"{id_prefix}_{self.seed}_{index:09d}",
                "org_id": org.org_id,
                "user_id": self.rng.choice(org.members),
                "surface": self.rng.choices(surfaces, surface_weights)[0],
                "model": self.rng.choices(models, model_weights)[0],
                "input_tokens": min(input_tokens, 200_000),
                "output_tokens": min(int(self.rng.lognormvariate(6.0, 0.9)), 64_000),
                "cache_creation_input_tokens": self.rng.choice((0, 0, 0, input_tokens // 2)),
                "cache_read_input_tokens": self.rng.choice((0, 0, input_tokens * 3)),
                "occurred_at": _stamp(first + step * index),
            }


def month_start(day: date) -> datetime:
    return datetime(day.year, day.month, 1, tzinfo=UTC)
