"""One org's enforcement state as Redis holds it, read and parsed in one place.

The gate, the usage view, the members board and the processors' notifications all decide
from the same few keys (`OrgKeys`: meta, members, caps, balance, the month's spend hash).
Each used to read and parse them its own way; a field added or a default changed in one
of them would make them disagree about the same org. `OrgState` is that state, typed, and
its two projections are the only ones there are: `gate_state` (what `decide` needs for
one member) and `spend_snapshot` (what the notification rules need for the month).

How the state is fetched stays with the caller, since round trips are what the hot paths
count: `read_org_state` is one pipelined round trip for one org; `queue_org_state` and
`org_state_from_replies` put several orgs into a caller's own pipeline; `OrgState.from_meta`
builds one from what a Lua script returned (the gate's reply, the usage script's); and
`OrgState.from_account` from the account processor's freshly folded `OrgAccount`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

import redis
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline as AsyncPipeline

from billing.accounts import Member, OrgAccount
from billing.enforcement import GateState
from billing.notifications import SpendSnapshot, UserSpend
from billing.pricing import PriceBook
from metering.enforcement.keys import OrgKeys
from metering.enforcement.state_codec import decode_member
from schemas.account import BillingMode, Plan, SeatType

# A value as Redis returns it (bytes), or as a Lua script's JSON reply carries it (str).
Raw = bytes | str

# The fields of the meta hash the state is made of (`state_codec.meta_fields` writes
# them); `term_start` is the account processor's business, not enforcement's.
META_FIELDS = ("plan", "billing_mode", "extra_usage", "org_cap", "thresholds", "purchases")
# The replies `queue_org_state` adds to a pipeline, in order: meta (HMGET of META_FIELDS),
# members, caps, balance, the month's spend hash.
REPLIES_PER_ORG = 5


def _text(raw: Raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


# The raw values below come from a handful of distinct strings (enums, "seat|role", the
# default thresholds), and the gate and the usage path parse them on every request or
# org: each is parsed once. Members and the tuples are frozen, so sharing them is safe.


@lru_cache(maxsize=256)
def member_entry(raw: Raw | None) -> Member | None:
    """`state_codec.decode_member`, for a members hash value (None or empty: no one)."""
    return decode_member(raw)


@lru_cache(maxsize=64)
def _plan(raw: Raw) -> Plan:
    return Plan(_text(raw))


@lru_cache(maxsize=64)
def _billing_mode(raw: Raw) -> BillingMode:
    return BillingMode(_text(raw))


@lru_cache(maxsize=256)
def _thresholds(raw: Raw) -> tuple[Decimal, ...]:
    return tuple(Decimal(t) for t in json.loads(raw))


def decode_members(raw: Mapping[Raw, Raw]) -> dict[str, Member]:
    """The members hash (user → "seat|role"); an entry that does not decode is no member."""
    members = {}
    for user, value in raw.items():
        member = member_entry(value)
        if member is not None:
            members[_text(user)] = member
    return members


def decode_amounts(raw: Mapping[Raw, Raw]) -> dict[str, int]:
    """A hash of nano-USD amounts by user (the caps hash)."""
    return {_text(user): int(value) for user, value in raw.items()}


@dataclass(frozen=True, slots=True)
class OrgState:
    """One org's enforcement state for one UTC month. Amounts are nano-USD; a user absent
    from a spend mapping has spent nothing, one absent from `caps_nano_usd` is uncapped.

    A reading may hold part of the org: the gate's holds only the member it was asked
    about, the usage script's only the users its events touched. Their projections are
    still exact for those users, which are the only ones such a reading is asked about.
    """

    org_id: str
    month: str  # YYYY-MM: the month of the spend fields below
    plan: Plan
    billing_mode: BillingMode
    extra_usage: bool
    org_cap_nano_usd: int | None  # None: unlimited
    members: Mapping[str, Member]
    caps_nano_usd: Mapping[str, int]
    balance_nano_usd: int  # prepaid credits (self-serve); may be negative
    # The month's spend hash (`OrgKeys.spend`): "org", "u:<user>", "a:<user>", "t:<user>".
    org_spend_nano_usd: int = 0  # billed
    user_spend_nano_usd: Mapping[str, int] = field(default_factory=dict)  # billed
    allowance_used_nano_usd: Mapping[str, int] = field(default_factory=dict)
    user_total_nano_usd: Mapping[str, int] = field(default_factory=dict)  # billed + included
    # Only notifications need these, and the gate's script does not read them: the
    # thresholds are None in its reading, so no snapshot is made from one.
    thresholds: tuple[Decimal, ...] | None = None
    purchases: int = 0  # credit purchases so far (tells stop/resume cycles apart)

    @classmethod
    def from_meta(
        cls,
        org_id: str,
        month: str,
        meta: Mapping[str, Raw | None],
        *,
        members: Mapping[str, Member],
        caps_nano_usd: Mapping[str, int],
        balance_nano_usd: int,
        org_spend_nano_usd: int = 0,
        user_spend_nano_usd: Mapping[str, int] | None = None,
        allowance_used_nano_usd: Mapping[str, int] | None = None,
        user_total_nano_usd: Mapping[str, int] | None = None,
    ) -> OrgState | None:
        """The state from the raw meta hash fields (absent: missing, None or empty) and
        the rest already parsed — the form a script's reply is easiest to hand over in.
        None when the org is unknown: no `plan` (no org.created applied yet)."""
        plan = meta.get("plan")
        if not plan:
            return None
        org_cap, thresholds, purchases = (
            meta.get("org_cap"),
            meta.get("thresholds"),
            meta.get("purchases"),
        )
        return cls(
            org_id=org_id,
            month=month,
            plan=_plan(plan),
            billing_mode=_billing_mode(meta.get("billing_mode") or ""),
            extra_usage=meta.get("extra_usage") in {"1", b"1"},
            org_cap_nano_usd=int(org_cap) if org_cap else None,
            members=members,
            caps_nano_usd=caps_nano_usd,
            balance_nano_usd=balance_nano_usd,
            org_spend_nano_usd=org_spend_nano_usd,
            user_spend_nano_usd=user_spend_nano_usd or {},
            allowance_used_nano_usd=allowance_used_nano_usd or {},
            user_total_nano_usd=user_total_nano_usd or {},
            thresholds=_thresholds(thresholds) if thresholds else None,
            purchases=int(purchases) if purchases else 0,  # the usage path's default too
        )

    @classmethod
    def from_raw(
        cls,
        org_id: str,
        month: str,
        *,
        meta: Mapping[str, Raw | None],
        members: Mapping[Raw, Raw],
        caps: Mapping[Raw, Raw],
        balance: Raw | None,
        spend: Mapping[Raw, Raw],
    ) -> OrgState | None:
        """The state from the org's keys as Redis returns them: the meta fields by name,
        the members, caps and spend hashes whole (HGETALL), the balance (GET)."""
        org, billed, used, totals = _split_spend(spend)
        return cls.from_meta(
            org_id,
            month,
            meta,
            members=decode_members(members),
            caps_nano_usd=decode_amounts(caps),
            balance_nano_usd=int(balance) if balance else 0,
            org_spend_nano_usd=org,
            user_spend_nano_usd=billed,
            allowance_used_nano_usd=used,
            user_total_nano_usd=totals,
        )

    @classmethod
    def from_account(
        cls, account: OrgAccount, month: str, *, spend: Mapping[Raw, Raw], balance: Raw | None
    ) -> OrgState:
        """The state of an org whose account the caller has just folded (the account
        processor): meta, members and caps from that account — what it writes to Redis —
        so only the spend hash and the balance need reading."""
        org, billed, used, totals = _split_spend(spend)
        return cls(
            org_id=account.org_id,
            month=month,
            plan=account.plan,
            billing_mode=account.billing_mode,
            extra_usage=account.extra_usage,
            org_cap_nano_usd=account.org_cap_nano_usd,
            members=account.members,
            caps_nano_usd=account.user_caps_nano_usd,
            balance_nano_usd=int(balance) if balance else 0,
            org_spend_nano_usd=org,
            user_spend_nano_usd=billed,
            allowance_used_nano_usd=used,
            user_total_nano_usd=totals,
            thresholds=account.thresholds,
            purchases=len(account.purchases),
        )

    @property
    def spenders(self) -> set[str]:
        """Everyone with billed spend recorded this month, members or not (any more)."""
        return set(self.user_spend_nano_usd)

    def gate_state(self, user_id: str, book: PriceBook, day: date) -> GateState:
        """What `billing.enforcement.decide` needs for `user_id`; their seat's allowance
        is the one in force on `day` (0 for someone who is not a member)."""
        member = self.members.get(user_id)
        return GateState(
            plan=self.plan,
            billing_mode=self.billing_mode,
            extra_usage=self.extra_usage,
            seat=member.seat if member else None,
            org_spend_nano_usd=self.org_spend_nano_usd,
            org_cap_nano_usd=self.org_cap_nano_usd,
            user_spend_nano_usd=self.user_spend_nano_usd.get(user_id, 0),
            user_cap_nano_usd=self.caps_nano_usd.get(user_id),
            credit_balance_nano_usd=self.balance_nano_usd,
            allowance_used_nano_usd=self.allowance_used_nano_usd.get(user_id, 0),
            allowance_nano_usd=book.usage_allowance(member.seat, day) if member else 0,
        )

    def spend_snapshot(
        self, book: PriceBook, day: date, users: Iterable[str] | None = None
    ) -> SpendSnapshot:
        """The month's numbers for the notification rules, for `users` (None: every
        member), with the seat allowances in force on `day` (the processors use the
        month's first day). Raises ValueError for a reading without thresholds (the
        gate's): its notifications would be decided against none."""
        if self.thresholds is None:
            raise ValueError(f"the state read of {self.org_id} has no notification thresholds")
        # One price book lookup per seat type, not per user: a usage batch may touch many
        # users, and the usage path builds a snapshot per batch (hence the locals, too).
        allowances: dict[SeatType, int] = {}
        members, caps = self.members, self.caps_nano_usd
        billed, used = self.user_spend_nano_usd, self.allowance_used_nano_usd
        spends = {}
        for user_id in members if users is None else users:
            member = members.get(user_id)
            allowance = 0
            if member is not None:
                allowance = allowances.get(member.seat, -1)
                if allowance < 0:
                    allowance = allowances[member.seat] = book.usage_allowance(member.seat, day)
            # Positional (spend, cap, allowance used, allowance): keywords cost ~4% here.
            spends[user_id] = UserSpend(
                billed.get(user_id, 0), caps.get(user_id), used.get(user_id, 0), allowance
            )
        return SpendSnapshot(
            org_id=self.org_id,
            month=self.month,
            plan=self.plan,
            billing_mode=self.billing_mode,
            extra_usage=self.extra_usage,
            thresholds=self.thresholds,
            org_spend_nano_usd=self.org_spend_nano_usd,
            org_cap_nano_usd=self.org_cap_nano_usd,
            balance_nano_usd=self.balance_nano_usd,
            purchases=self.purchases,
            users=spends,
        )


def _split_spend(
    raw: Mapping[Raw, Raw],
) -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
    """A month's spend hash as (org billed, billed by user, allowance used by user, total
    by user)."""
    org = 0
    by_kind: dict[str, dict[str, int]] = {"u": {}, "a": {}, "t": {}}
    for name, value in raw.items():
        text = _text(name)
        if text == "org":
            org = int(value)
            continue
        kind, _, user = text.partition(":")
        amounts = by_kind.get(kind)
        if amounts is not None:
            amounts[user] = int(value)
    return org, by_kind["u"], by_kind["a"], by_kind["t"]


def queue_org_state(
    pipe: AsyncPipeline | redis.client.Pipeline, prefix: str, org_id: str, month: str
) -> None:
    """Add the reads of one org's state to `pipe` (`REPLIES_PER_ORG` replies, for
    `org_state_from_replies`): callers reading many orgs send them in one round trip."""
    keys = OrgKeys(prefix, org_id)
    pipe.hmget(keys.meta, list(META_FIELDS))
    pipe.hgetall(keys.members)
    pipe.hgetall(keys.caps)
    pipe.get(keys.balance)
    pipe.hgetall(keys.spend(month))


def org_state_from_replies(org_id: str, month: str, replies: Sequence[Any]) -> OrgState | None:
    """The state from the `REPLIES_PER_ORG` replies of `queue_org_state`; None when the
    org is unknown."""
    meta, members, caps, balance, spend = replies
    return OrgState.from_raw(
        org_id,
        month,
        meta=dict(zip(META_FIELDS, meta, strict=True)),
        members=members,
        caps=caps,
        balance=balance,
        spend=spend,
    )


async def read_org_state(client: Redis, prefix: str, org_id: str, month: str) -> OrgState | None:
    """One org's state for `month`, in one pipelined round trip; None when it is unknown.
    A pipeline, not a transaction: a usage batch applied between two of its reads may
    show in one key and not yet in another (the gate, which must not, reads by script)."""
    pipe = client.pipeline(transaction=False)
    queue_org_state(pipe, prefix, org_id, month)
    return org_state_from_replies(org_id, month, await pipe.execute())
