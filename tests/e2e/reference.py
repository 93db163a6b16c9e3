"""An independent, deliberately simple model of what Redis must hold after a stream of
usage events (the oracle of the crash and rebalance tests). Written from SPEC §2 and §5,
sharing no code with `billing/` or `metering/`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

# SPEC §5, nano-USD per token: USD per million tokens × 10^9 / 10^6.
RATES = {
    "claude-opus-4-5": (5000, 25000, 6250, 500),
    "claude-opus-4-1": (15000, 75000, 18750, 1500),
    "claude-sonnet-4-5": (3000, 15000, 3750, 300),
    "claude-haiku-4-5": (1000, 5000, 1250, 100),
}
ALLOWANCE = {"standard": 25 * 10**9, "premium": 125 * 10**9}


@dataclass
class RefOrg:
    plan: str
    mode: str
    seats: dict[str, str]  # user → seat type
    balance: int = 0


@dataclass
class Reference:
    orgs: dict[str, RefOrg] = field(default_factory=dict)
    # (org, month) → field → nano-USD, the layout of the `spend:<month>` hash
    spend: dict[tuple[str, str], dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    caps: dict[tuple[str, str | None], int] = field(default_factory=dict)  # user None: org
    accepted: set[str] = field(default_factory=set)
    # event_id → (org, user, model, surface, month, cost, billed) of each accepted event
    rows: dict[str, tuple[str, str, str, str, str, int, int]] = field(default_factory=dict)
    dead: int = 0
    duplicates: int = 0

    def org(self, org_id: str, plan: str, mode: str, seats: dict[str, str], credits: int) -> None:
        self.orgs[org_id] = RefOrg(plan, mode, dict(seats), credits)

    def usage(self, event: dict[str, Any]) -> None:
        org = self.orgs.get(event["org_id"])
        if org is None or event["model"] not in RATES:
            self.dead += 1
            return
        if event["event_id"] in self.seen:
            if self.seen[event["event_id"]] == event:
                self.duplicates += 1
            else:
                self.dead += 1
            return
        self.seen[event["event_id"]] = event
        self.accepted.add(event["event_id"])
        rates = RATES[event["model"]]
        tokens = (
            event["input_tokens"],
            event["output_tokens"],
            event.get("cache_creation_input_tokens", 0),
            event.get("cache_read_input_tokens", 0),
        )
        cost = sum(t * r for t, r in zip(tokens, rates, strict=True))
        month = event["occurred_at"][:7]
        bucket = self.spend[(event["org_id"], month)]
        user = event["user_id"]
        included = 0
        if org.plan == "seat_based":
            allowance = ALLOWANCE.get(org.seats.get(user, ""), 0)
            included = min(cost, max(0, allowance - bucket[f"a:{user}"]))
            bucket[f"a:{user}"] += included
        billed = cost - included
        self.rows[event["event_id"]] = (
            event["org_id"],
            user,
            event["model"],
            event["surface"],
            month,
            cost,
            billed,
        )
        bucket["org"] += billed
        bucket[f"u:{user}"] += billed
        bucket[f"t:{user}"] += cost
        if org.mode == "self_serve":
            org.balance -= billed

    def spend_hash(self, org_id: str, month: str) -> dict[str, int]:
        return {k: v for k, v in self.spend[(org_id, month)].items() if v}

    def thresholds_reached(
        self, month: str, fractions: tuple[str, ...] = ("0.5", "0.8", "1")
    ) -> set[tuple[str, str | None, str]]:
        """(org, user or None, fraction) for every capped subject whose billed spend is at
        least fraction × cap; spend only grows, so this is every threshold ever reached."""
        reached = set()
        for (org, user), cap in self.caps.items():
            spent = self.spend[(org, month)]["org" if user is None else f"u:{user}"]
            for text in fractions:
                numerator, _, decimals = text.partition(".")
                scale = 10 ** len(decimals)
                if spent * scale >= int(numerator + decimals) * cap:
                    reached.add((org, user, text))
        return reached
