"""The reliability suite's workload (issue 7): a seeded scenario over two closed months,
built from `random.Random(seed)` alone — same seed, same records, same fault schedule.

Orgs of every plan × billing mode, with mixed seat types, caps (org, user, unlimited),
credits (some too small: they run out, then are bought again), seat allowances with and
without extra usage. The scenario runs in phases; each phase's account events are
applied before its usage is sent:

- `setup`    (September): orgs, members, credits, caps, and an account-event poison of
             every class;
- `usage`    September usage with duplicate bursts, id conflicts and usage poison of every
             class; faults: a worker SIGKILLed, a worker added, Redis and Kafka restarted;
- `controls` owner controls through the HTTP API (raised/lowered/unlimited caps, credit
             purchases, a refused call), with the API SIGKILLed mid-request; seats added
             (prorated invoices), a member joining, seat removals;
- `boundary` usage on both sides of October 1st (the exact instants included), credits
             bought in October; faults: the added worker leaves, Redis flushed and rebuilt,
             a worker SIGKILLed. Then September is billed, with `billing run` SIGKILLed;
- `late`     September usage and a September purchase arriving after September's
             documents (adjustments), more October; faults: Kafka restarted, a worker
             SIGKILLed. Then October is billed, with `billing run` SIGKILLed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tests.e2e.reference import RATES

MONTH, NEXT_MONTH = "2026-09", "2026-10"
START = datetime(2026, 9, 1, tzinfo=UTC)
BOUNDARY = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
TINY = timedelta(microseconds=1)
SURFACES = ("chat_web", "chat_desktop", "chat_mobile", "claude_code", "cowork")
OWNER = {"user_id": "owner", "role": "primary_owner"}
UNKNOWN_MODEL = "claude-unknown-9"

# (plan, billing mode, seat types its members get, extra usage)
PROFILES = (
    ("usage_based", "self_serve", ("enterprise", "enterprise", "chat"), False),
    ("usage_based", "sales_assisted", ("enterprise", "chat_claude_code"), False),
    ("usage_based", "self_serve", ("chat_claude_code", "chat"), False),
    ("usage_based", "sales_assisted", ("chat", "enterprise"), False),
    ("seat_based", "self_serve", ("standard",), False),
    ("seat_based", "sales_assisted", ("premium", "standard"), False),
    ("seat_based", "self_serve", ("premium", "standard"), True),
    ("seat_based", "sales_assisted", ("standard",), True),
)
ORGS_PER_PROFILE = 3
# Usage records per phase, and the faults injected while each phase's usage is sent.
USAGE_RECORDS = {"usage": 4000, "boundary": 3000, "late": 1500}
PHASE_FAULTS = {
    "usage": ("kill_worker", "add_worker", "restart_redis", "restart_kafka"),
    "boundary": ("remove_worker", "flush_rebuild", "kill_worker"),
    "late": ("restart_kafka", "kill_worker"),
}
USAGE_POISON = (
    "malformed_json",
    "not_utf8",
    "no_value",
    "payload_too_large",
    "missing_field",
    "unknown_field",
    "schema_violation",
    "invalid_id",
    "negative_tokens",
    "tokens_out_of_range",
    "naive_timestamp",
    "future_event",
    "unknown_surface",
)
POISON_REASON = {"not_utf8": "malformed_json", "no_value": "malformed_json"}


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def usd(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@dataclass(frozen=True)
class OrgSpec:
    org_id: str
    plan: str
    mode: str
    extra_usage: bool
    term_start: date
    created_at: datetime
    members: dict[str, tuple[str, str]]  # user → (seat type, role), the initial members
    heavy: str  # the member who sends most of the org's usage
    small_credits: bool  # self-serve: bought too little at first

    @property
    def self_serve(self) -> bool:
        return self.mode == "self_serve"

    @property
    def seat_types(self) -> tuple[str, ...]:
        return tuple(sorted({seat for seat, _ in self.members.values()}))


@dataclass(frozen=True)
class Record:
    """One record for an input topic: a valid event (judged by the model) or poison
    whose dead-letter reason follows from its bytes alone."""

    topic: str  # "usage" or "account"
    key: bytes | None
    value: bytes | None
    event: dict[str, Any] | None = None
    poison: str | None = None  # the expected dead-letter reason

    @staticmethod
    def of(topic: str, event: dict[str, Any]) -> Record:
        return Record(topic, event["org_id"].encode(), json.dumps(event).encode(), event)


@dataclass(frozen=True)
class ApiCall:
    """An owner control through the HTTP API, and what it must change (once, however
    often it is retried)."""

    org_id: str
    user_id: str  # whose token
    method: str
    path: str
    body: dict[str, Any]
    refused: bool = False  # answered 403 and changes nothing


@dataclass(frozen=True)
class Fault:
    after: int  # how many of the phase's usage records are sent before it
    kind: str
    settle_s: float  # how long after those records' delivery it strikes


@dataclass
class Phase:
    name: str
    accounts: list[Record] = field(default_factory=list)
    api: list[ApiCall] = field(default_factory=list)
    api_kills: dict[int, float] = field(default_factory=dict)  # call index → delay (s)
    usage: list[Record] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    bill: str | None = None  # the month billed after this phase
    billing_kills: list[float] = field(default_factory=list)  # seconds into each killed run


@dataclass
class Scenario:
    seed: int
    orgs: list[OrgSpec]
    phases: list[Phase]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.counter = 0
        self.orgs: list[OrgSpec] = []
        self.valid_usage: list[dict[str, Any]] = []  # for duplicates and conflicts
        self.members: dict[str, dict[str, tuple[str, str]]] = {}  # org → user → (seat, role)

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.seed}-{self.counter}"

    def account(
        self,
        org_id: str,
        kind: str,
        data: dict[str, Any],
        at: datetime,
        actor: dict[str, str] | None = OWNER,
    ) -> dict[str, Any]:
        return {
            "event_id": self.next_id("a"),
            "type": kind,
            "org_id": org_id,
            "occurred_at": stamp(at),
            "actor": actor,
            "data": data,
        }

    # -- orgs and the setup phase ---------------------------------------------------------

    def make_orgs(self) -> None:
        rng = self.rng
        index = 0
        for plan, mode, seats, extra in PROFILES:
            for copy in range(ORGS_PER_PROFILE):
                org_id = f"org_{index:02d}_{plan[:4]}_{mode[:5]}"
                members = {"owner": (seats[0], "primary_owner"), "admin": (seats[-1], "admin")}
                for n in range(1, rng.randint(2, 4) + 1):
                    members[f"u{n}"] = (rng.choice(seats), "member")
                term = START.date()
                if copy == 1:  # a term that began before September
                    term = date(2026, 6, 15)
                elif copy == 2:  # a term that begins after the org is created
                    term = date(2026, 9, rng.randint(2, 12))
                self.orgs.append(
                    OrgSpec(
                        org_id=org_id,
                        plan=plan,
                        mode=mode,
                        extra_usage=extra,
                        term_start=term,
                        created_at=START + timedelta(minutes=10 + index),
                        members=members,
                        heavy=rng.choice([u for u in members if u != "admin"]),
                        small_credits=mode == "self_serve" and copy != 1,
                    )
                )
                self.members[org_id] = dict(members)
                index += 1

    def setup(self) -> Phase:
        rng = self.rng
        records: list[Record] = []
        accepted: list[dict[str, Any]] = []
        for org in self.orgs:
            at = org.created_at
            seats: dict[str, int] = {}
            for seat, _ in org.members.values():
                seats[seat] = seats.get(seat, 0) + 1
            created: dict[str, Any] = {
                "plan": org.plan,
                "billing_mode": org.mode,
                "term_start": org.term_start.isoformat(),
                "seats": seats,
                "extra_usage": org.extra_usage,
            }
            if rng.random() < 0.25:
                created["notification_thresholds"] = ["0.25", "0.9"]
            events = [self.account(org.org_id, "org.created", created, at, actor=None)]
            for user, (seat, role) in org.members.items():
                data = {"user_id": user, "role": role, "seat_type": seat}
                events.append(self.account(org.org_id, "member.added", data, at, actor=None))
            if org.self_serve:
                cents = rng.randint(300, 1200) if org.small_credits else rng.randint(30000, 150000)
                data = {"purchase_id": f"pay-{org.org_id}-0", "amount": usd(cents)}
                events.append(self.account(org.org_id, "credits.purchased", data, at))
            if rng.random() < 0.5:
                limit = usd(rng.randint(1500, 9000))
                events.append(self.cap(org.org_id, None, limit, at))
            users = [u for u in org.members if u != "owner"]
            for user in rng.sample(users, rng.randint(1, 2)):
                events.append(self.cap(org.org_id, user, usd(rng.randint(300, 2500)), at))
            if rng.random() < 0.3:  # an explicit "unlimited" (R16)
                events.append(self.cap(org.org_id, rng.choice(users), None, at))
            records += [Record.of("account", e) for e in events]
            accepted += events
        records += self.account_poison(accepted)
        return Phase("setup", accounts=records)

    def cap(self, org_id: str, user: str | None, limit: str | None, at: datetime) -> dict[str, Any]:
        return self.account(org_id, "spend_cap.set", {"user_id": user, "limit": limit}, at)

    def account_poison(self, accepted: list[dict[str, Any]]) -> list[Record]:
        """Every way an account event is refused, each once, plus a duplicate (counted
        once, not dead-lettered); the model decides the rule-based refusals."""
        rng = self.rng
        org = rng.choice(self.orgs)
        self_serve = rng.choice([o for o in self.orgs if o.self_serve])
        sales = rng.choice([o for o in self.orgs if not o.self_serve])
        usage_based = rng.choice([o for o in self.orgs if o.plan == "usage_based"])
        at = START + timedelta(days=1)
        purchase = next(e for e in accepted if e["type"] == "credits.purchased")
        cap = next(e for e in accepted if e["type"] == "spend_cap.set")
        key = org.org_id.encode()
        purchase_data = {"purchase_id": "p-money", "amount": "1.00"}
        cap_data = {"user_id": None, "limit": "1.00"}
        invalid: list[tuple[str, dict[str, Any]]] = [
            ("unknown_event_type", self.account(org.org_id, "org.exploded", {}, at)),
            (
                "invalid_money",  # a JSON number, not a decimal string
                self.account(org.org_id, "credits.purchased", {**purchase_data, "amount": 100}, at),
            ),
            (
                "naive_timestamp",
                {**self.cap(org.org_id, None, "1.00", at), "occurred_at": "2026-09-02T10:00:00"},
            ),
            (
                "future_event",
                {
                    **self.account(org.org_id, "spend_cap.set", cap_data, at),
                    "occurred_at": "2099-01-01T00:00:00Z",
                },
            ),
        ]
        records = [Record("account", key, b'{"type": "org.created", ', poison="malformed_json")]
        records += [
            Record("account", key, json.dumps(event).encode(), poison=reason)
            for reason, event in invalid
        ]
        member = {"user_id": "u1", "role": "owner"}  # claims to be an owner; is a member
        refused = [
            self.account(
                self_serve.org_id,
                "credits.purchased",
                {"purchase_id": "pay-by-member", "amount": "5.00"},
                at,
                actor=member,
            ),
            self.account(
                sales.org_id, "credits.purchased", {"purchase_id": "p-s", "amount": "5.00"}, at
            ),
            {**purchase, "event_id": self.next_id("a")},  # the same purchase_id again
            self.cap(org.org_id, "nobody", "1.00", at),
            self.account(
                "org_ghost",
                "member.added",
                {"user_id": "u", "role": "member", "seat_type": "enterprise"},
                at,
            ),
            {**accepted[0], "event_id": self.next_id("a")},  # org.created again
            self.account(
                org.org_id,
                "member.added",
                {"user_id": "u1", "role": "member", "seat_type": org.members["u1"][0]},
                at,
                actor=None,
            ),
            self.account(
                usage_based.org_id, "seats.added", {"seat_type": "standard", "quantity": 1}, at
            ),
            self.account(
                self_serve.org_id,
                "seats.removed",
                {"seat_type": self_serve.members["owner"][0], "quantity": 1},
                at,
            ),
            {**cap, "data": {**cap["data"], "limit": "999.00"}},  # same id, other payload
            cap,  # the same event again: a duplicate
        ]
        return records + [Record.of("account", e) for e in refused]

    # -- usage ----------------------------------------------------------------------------

    def usage_event(self, phase: str, when: Callable[[], datetime]) -> dict[str, Any]:
        rng = self.rng
        org = rng.choice(self.orgs)
        org_id = org.org_id
        if rng.random() < 0.01:
            org_id = f"org_ghost_{rng.randrange(3)}"
        members = self.members[org.org_id]
        roll = rng.random()
        if roll < 0.45:
            user = org.heavy
        elif roll < 0.97:
            user = rng.choice(sorted(members))
        else:
            user = f"stranger_{rng.randrange(3)}"  # billed to the org; the gate refuses
        input_tokens = rng.randint(0, 120_000)
        return {
            "event_id": self.next_id(f"e{phase[0]}"),
            "org_id": org_id,
            "user_id": user,
            "surface": rng.choice(SURFACES),
            "model": rng.choices([*RATES, UNKNOWN_MODEL], [25, 10, 40, 25, 1])[0],
            "input_tokens": input_tokens,
            "output_tokens": rng.randint(0, 16_000),
            "cache_creation_input_tokens": rng.choice([0, 0, 0, rng.randint(0, 40_000)]),
            "cache_read_input_tokens": rng.choice([0, 0, input_tokens * 2]),
            "occurred_at": stamp(when()),
        }

    def conflict(self) -> dict[str, Any]:
        """A previous event's id with another payload; sometimes in the other month (an
        id is one event, whatever month it claims, G1)."""
        rng = self.rng
        original = rng.choice(self.valid_usage)
        change = rng.randrange(3)
        if change == 0:
            return {**original, "output_tokens": original["output_tokens"] + 1}
        if change == 1:
            return {**original, "user_id": "u1" if original["user_id"] != "u1" else "owner"}
        moment = parse_stamp(original["occurred_at"])
        moved = moment + timedelta(days=30) if moment < BOUNDARY else moment - timedelta(days=30)
        return {**original, "occurred_at": stamp(min(max(moved, START), END - TINY))}

    def poison(self, kind: str, when: Callable[[], datetime]) -> Record:
        event = self.usage_event("p", when)
        event["org_id"] = self.rng.choice(self.orgs).org_id
        key = event["org_id"].encode()
        reason = POISON_REASON.get(kind, kind)
        special: dict[str, bytes | None] = {
            "malformed_json": json.dumps(event).encode()[:-7],
            "not_utf8": b"\xff\xfe" + json.dumps(event).encode(),
            "no_value": None,
        }
        if kind in special:
            return Record("usage", key, special[kind], poison=reason)
        changes: dict[str, dict[str, Any]] = {
            "payload_too_large": {"padding": "x" * 17_000},
            "unknown_field": {"region": "eu-west"},
            "schema_violation": {"input_tokens": str(event["input_tokens"])},
            "invalid_id": {"event_id": "bad id!"},
            "negative_tokens": {"output_tokens": -1},
            "tokens_out_of_range": {"input_tokens": 10_000_001},
            "naive_timestamp": {"occurred_at": event["occurred_at"][:-1]},
            "future_event": {"occurred_at": "2099-01-01T00:00:00.000000Z"},
            "unknown_surface": {"surface": "fax"},
        }
        if kind == "missing_field":
            del event["surface"]
        else:
            event.update(changes[kind])
        return Record("usage", key, json.dumps(event).encode(), poison=reason)

    def usage_phase(self, name: str, count: int, when: Callable[[], datetime]) -> list[Record]:
        rng = self.rng
        records: list[Record] = []
        must_poison = list(USAGE_POISON) if name == "usage" else []
        while len(records) < count:
            roll = rng.random()
            if must_poison and roll < 0.05:
                records.append(self.poison(must_poison.pop(), when))
            elif roll < 0.015 and self.valid_usage:  # a burst of one event sent again
                copy = dict(rng.choice(self.valid_usage))
                records += [Record.of("usage", copy) for _ in range(rng.randint(2, 20))]
            elif roll < 0.035 and self.valid_usage:
                records.append(Record.of("usage", self.conflict()))
            elif roll < 0.065:
                records.append(self.poison(rng.choice(USAGE_POISON), when))
            else:
                event = self.usage_event(name, when)
                self.valid_usage.append(event)
                records.append(Record.of("usage", event))
        records += [self.poison(kind, when) for kind in must_poison]
        return records

    def faults(self, name: str, count: int) -> list[Fault]:
        kinds = list(PHASE_FAULTS[name])
        self.rng.shuffle(kinds)
        positions = sorted(self.rng.sample(range(count // 20, count - count // 20), len(kinds)))
        return [
            Fault(at, kind, round(self.rng.uniform(0.0, 0.8), 2))
            for at, kind in zip(positions, kinds, strict=True)
        ]

    # -- the other phases -----------------------------------------------------------------

    def controls(self) -> Phase:
        """Owner controls through the API, and account changes of late September."""
        rng = self.rng
        calls: list[ApiCall] = []
        for org in self.orgs:
            if org.small_credits:
                cents = rng.choice([rng.randint(50, 200), rng.randint(10000, 40000)])
                body = {"purchase_id": f"api-{org.org_id}", "amount": usd(cents)}
                calls.append(
                    ApiCall(org.org_id, "owner", "POST", f"/v1/orgs/{org.org_id}/credits", body)
                )
            if rng.random() < 0.4:
                user = rng.choice([u for u in org.members if u != "owner"])
                limit = rng.choice([None, usd(rng.randint(3000, 8000)), usd(rng.randint(100, 400))])
                path = f"/v1/orgs/{org.org_id}/spend-caps/users/{user}"
                calls.append(ApiCall(org.org_id, "owner", "PUT", path, {"limit": limit}))
            if rng.random() < 0.4:
                limit = rng.choice(
                    [None, usd(rng.randint(10000, 30000)), usd(rng.randint(500, 2000))]
                )
                path = f"/v1/orgs/{org.org_id}/spend-caps/org"
                calls.append(ApiCall(org.org_id, "owner", "PUT", path, {"limit": limit}))
        refused = rng.choice(self.orgs)
        calls.insert(
            rng.randrange(len(calls)),
            ApiCall(
                refused.org_id,
                rng.choice(["admin", "u1"]),  # neither may set caps (R14)
                "PUT",
                f"/v1/orgs/{refused.org_id}/spend-caps/org",
                {"limit": None},
                refused=True,
            ),
        )
        kills = {i: round(rng.uniform(0.0, 0.05), 3) for i in rng.sample(range(len(calls)), 2)}
        at = START + timedelta(days=19, hours=rng.randint(0, 23))
        accounts = []
        for org in rng.sample(self.orgs, 8):
            seat = rng.choice(org.seat_types)
            data = {"seat_type": seat, "quantity": rng.randint(1, 5)}
            accounts.append(self.account(org.org_id, "seats.added", data, at))
        for org in rng.sample(self.orgs, 6):
            # Members fit the seats: a joiner gets a seat bought for them first.
            seat = rng.choice(org.seat_types)
            more = {"seat_type": seat, "quantity": 1}
            accounts.append(self.account(org.org_id, "seats.added", more, at))
            data = {"user_id": "joiner", "role": "member", "seat_type": seat}
            accounts.append(self.account(org.org_id, "member.added", data, at, actor=None))
            self.members[org.org_id]["joiner"] = (seat, "member")
        for org in [o for o in self.orgs if not o.self_serve][:2]:
            # A spare seat, then its removal: pending until the renewal (R5).
            data = {"seat_type": org.members["owner"][0], "quantity": 1}
            accounts.append(self.account(org.org_id, "seats.added", data, at))
            accounts.append(self.account(org.org_id, "seats.removed", data, at))
        return Phase(
            "controls",
            accounts=[Record.of("account", e) for e in accounts],
            api=calls,
            api_kills=kills,
        )

    def boundary(self) -> Phase:
        rng = self.rng
        accounts = []
        for org in [o for o in self.orgs if o.small_credits]:
            amount = usd(rng.randint(1000, 6000))
            data = {"purchase_id": f"pay-{org.org_id}-oct", "amount": amount}
            at = BOUNDARY + timedelta(hours=rng.randint(1, 30))
            accounts.append(self.account(org.org_id, "credits.purchased", data, at))
        for org in rng.sample(self.orgs, 4):
            seats = {"seat_type": rng.choice(org.seat_types), "quantity": rng.randint(1, 3)}
            at = BOUNDARY + timedelta(days=4, hours=rng.randint(0, 23))
            accounts.append(self.account(org.org_id, "seats.added", seats, at))

        def when() -> datetime:
            if rng.random() < 0.02:
                return rng.choice([BOUNDARY - TINY, BOUNDARY])  # the last and first instants
            return BOUNDARY + timedelta(seconds=rng.uniform(-2 * 86400, 2 * 86400))

        count = USAGE_RECORDS["boundary"]
        return Phase(
            "boundary",
            accounts=[Record.of("account", e) for e in accounts],
            usage=self.usage_phase("boundary", count, when),
            faults=self.faults("boundary", count),
            bill=MONTH,
            billing_kills=[round(rng.uniform(0.5, 9.0), 1) for _ in range(2)],
        )

    def late(self) -> Phase:
        rng = self.rng
        accounts = []
        for org in rng.sample([o for o in self.orgs if o.self_serve], 2):
            data = {"purchase_id": f"pay-{org.org_id}-late", "amount": usd(rng.randint(100, 900))}
            at = BOUNDARY - timedelta(days=1, hours=rng.randint(0, 20))  # bought in September
            accounts.append(self.account(org.org_id, "credits.purchased", data, at))

        def when() -> datetime:
            if rng.random() < 0.3:  # September usage arriving after September was billed
                return BOUNDARY - timedelta(seconds=rng.uniform(1, 29 * 86400))
            if rng.random() < 0.01:
                return END - TINY
            return BOUNDARY + timedelta(seconds=rng.uniform(2 * 86400, 30 * 86400))

        count = USAGE_RECORDS["late"]
        return Phase(
            "late",
            accounts=[Record.of("account", e) for e in accounts],
            usage=self.usage_phase("late", count, when),
            faults=self.faults("late", count),
            bill=NEXT_MONTH,
            billing_kills=[round(rng.uniform(0.5, 9.0), 1)],
        )

    def cap_lift(self) -> tuple[OrgSpec, list[Record], list[Record], list[Record]]:
        """An org no random record touches, so that every seed has a member whose user
        cap blocks them in September and who may spend again in October (R16, R17): its
        spec, setup records, September usage and October usage. Built without the rng so
        the seeded records stay what they were."""
        org_id, at = "org_cap_lift", START + timedelta(minutes=5)
        members = {"owner": ("enterprise", "primary_owner"), "capped": ("chat", "member")}
        spec = OrgSpec(
            org_id=org_id,
            plan="usage_based",
            mode="sales_assisted",
            extra_usage=False,
            term_start=START.date(),
            created_at=at,
            members=members,
            heavy="capped",
            small_credits=False,
        )
        created = {
            "plan": spec.plan,
            "billing_mode": spec.mode,
            "term_start": spec.term_start.isoformat(),
            "seats": {"enterprise": 1, "chat": 1},
            "extra_usage": False,
        }
        accounts = [self.account(org_id, "org.created", created, at, actor=None)]
        for user, (seat, role) in members.items():
            data = {"user_id": user, "role": role, "seat_type": seat}
            accounts.append(self.account(org_id, "member.added", data, at, actor=None))
        accounts.append(self.cap(org_id, "capped", "1.00", at))

        def usage(phase: str, model: str, tokens: int, day: datetime) -> Record:
            event = {
                "event_id": self.next_id(f"e{phase[0]}"),
                "org_id": org_id,
                "user_id": "capped",
                "surface": "chat_web",
                "model": model,
                "input_tokens": tokens,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "occurred_at": stamp(day),
            }
            return Record.of("usage", event)

        # $1.50 each at claude-opus-4-1's $15 per million input tokens: over the $1 cap.
        september = [
            usage("usage", "claude-opus-4-1", 100_000, START + timedelta(days=d)) for d in (3, 4)
        ]
        october = [usage("late", "claude-haiku-4-5", 1_000, BOUNDARY + timedelta(days=10))]
        return spec, [Record.of("account", e) for e in accounts], september, october

    def build(self) -> Scenario:
        self.make_orgs()
        setup = self.setup()

        def in_september() -> datetime:
            return START + timedelta(seconds=self.rng.uniform(3600, 29 * 86400 - 3600))

        count = USAGE_RECORDS["usage"]
        usage = Phase(
            "usage",
            usage=self.usage_phase("usage", count, in_september),
            faults=self.faults("usage", count),
        )
        controls, boundary, late = self.controls(), self.boundary(), self.late()
        spec, accounts, september, october = self.cap_lift()
        setup.accounts[:0] = accounts
        usage.usage += september
        late.usage += october
        return Scenario(self.seed, [*self.orgs, spec], [setup, usage, controls, boundary, late])


def build_scenario(seed: int) -> Scenario:
    return _Builder(seed).build()
