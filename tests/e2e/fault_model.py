"""The reliability suite's oracle: what every record must become, and what Redis, the
output topics and the documents must hold, derived from the SPEC alone. It shares no
code with `billing/` or `metering/`: usage counters come from `tests/e2e/reference.py`,
documents from `tests/billing/reference_biller.py`, and the account rules, the gate's
decision (R15) and the notifications (R16, R17) are restated here.

Notifications are predicted per phase: within a phase caps and credits do not change
(account events are applied before the phase's usage is sent), spend only grows, and
the last record of a subject in a phase sees its final spend, so what a subject was
notified of is what its spend at the end of each phase reached under that phase's caps.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from tests.billing import reference_biller as ref_biller
from tests.e2e.fault_workload import START, OrgSpec, Record, parse_stamp
from tests.e2e.reference import ALLOWANCE, RATES, Reference

NANO = 10**9
DEFAULT_THRESHOLDS = ("0.5", "0.8", "1")
BALANCE_LEVELS = (10 * NANO, 1 * NANO)  # METERING_BALANCE_ALERT_LEVELS' default
MONEY_ROLES = frozenset({"owner", "primary_owner"})
PLAN_SEATS = {
    "usage_based": frozenset({"enterprise", "chat", "chat_claude_code"}),
    "seat_based": frozenset({"standard", "premium"}),
}
CHAT = frozenset({"chat_web", "chat_desktop", "chat_mobile"})
# R2, and docs/decisions.md for the legacy seats (standard: chat; premium: + Claude Code)
SEAT_SURFACES = {
    "enterprise": CHAT | {"claude_code", "cowork"},
    "chat": CHAT,
    "chat_claude_code": CHAT | {"claude_code"},
    "standard": CHAT,
    "premium": CHAT | {"claude_code"},
}
# What the seat invoices depend on: seats, and the members holding them (a removal may
# not leave members without a seat).
SEAT_KINDS = frozenset({"org.created", "seats.added", "seats.removed", "member.added"})

# ("threshold_reached", org, user, month, threshold) · ("stopped"|"resumed", org, user,
# month, reason, cycle) · ("balance_low", org, level in nano-USD, cycle)
Notice = tuple[Any, ...]


def nano(amount: str) -> int:
    return int(Decimal(amount) * NANO)


def month_start(month: str) -> datetime:
    return datetime.fromisoformat(f"{month}-01T00:00:00+00:00")


@dataclass
class OrgState:
    spec: OrgSpec
    thresholds: tuple[str, ...]
    members: dict[str, tuple[str, str]] = field(default_factory=dict)  # user → (seat, role)
    org_cap: int | None = None
    user_caps: dict[str, int] = field(default_factory=dict)
    purchases: dict[str, int] = field(default_factory=dict)
    seats: dict[str, int] = field(default_factory=dict)
    pending_removals: dict[str, int] = field(default_factory=dict)
    credit_stops: set[int] = field(default_factory=set)  # purchase cycles stopped, not resumed


@dataclass(frozen=True)
class Row:
    """One accepted usage event, as the documents see it."""

    org: str
    user: str
    model: str
    month: str
    tokens: int
    billed: int
    cycle: int  # how many months had been billed when it was processed


@dataclass(frozen=True)
class Buy:
    org: str
    purchase_id: str
    occurred_at: datetime
    amount: int
    cycle: int


class Model:
    def __init__(self, specs: list[OrgSpec]) -> None:
        self.specs = {spec.org_id: spec for spec in specs}
        self.ref = Reference()
        self.orgs: dict[str, OrgState] = {}
        self.account_ids: dict[tuple[str, str], dict[str, Any]] = {}
        self.cycle = 0
        self.rows: list[Row] = []
        self.buys: list[Buy] = []
        self.seat_log: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.seat_outcomes: dict[str, list[bool]] = defaultdict(list)
        self.seat_changes: dict[str, list[tuple[datetime, int, str, int]]] = defaultdict(list)
        self.notices: set[Notice] = set()
        self._touched: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._touched_orgs: set[str] = set()

    # -- account events -------------------------------------------------------------------

    def account(self, record: Record) -> str:
        """The outcome of an account record: "ok", "duplicate" or a dead-letter reason."""
        if record.poison is not None:
            return record.poison
        event = record.event
        assert event is not None
        key = (event["org_id"], event["event_id"])
        seen = self.account_ids.get(key)
        if seen is not None:
            return "duplicate" if seen == event else "event_id_conflict"
        outcome = self._fold(event)
        if event["org_id"] in self.orgs:  # ids are kept with the org's state
            self.account_ids[key] = event
        if event["type"] in SEAT_KINDS and event["org_id"] in self.specs:
            self.seat_log[event["org_id"]].append(event)
            self.seat_outcomes[event["org_id"]].append(outcome == "ok")
        return outcome

    def _fold(self, event: dict[str, Any]) -> str:  # noqa: PLR0911, PLR0912 - one rule a line
        kind, data, org_id = event["type"], event["data"], event["org_id"]
        org = self.orgs.get(org_id)
        at = parse_stamp(event["occurred_at"])
        if kind == "org.created":
            if org is not None:
                return "org_already_exists"
            self._create(org_id, data, at)
            return "ok"
        if org is None:
            return "unknown_org"
        actor = event["actor"]
        permitted = actor is None or org.members.get(actor["user_id"], ("", ""))[1] in MONEY_ROLES
        seats_of_plan = PLAN_SEATS[org.spec.plan]
        if not permitted:
            return "not_permitted"

        def kept(seat: str) -> int:
            return org.seats.get(seat, 0) - org.pending_removals.get(seat, 0)

        def taken(seat: str) -> int:
            return sum(1 for held, _role in org.members.values() if held == seat)

        if kind == "member.added":
            if data["user_id"] in org.members:
                return "member_already_exists"
            if data["role"] == "primary_owner" and any(
                role == "primary_owner" for _seat, role in org.members.values()
            ):
                return "primary_owner_protected"
            if data["seat_type"] not in seats_of_plan:
                return "seat_type_not_in_plan"
            if taken(data["seat_type"]) >= kept(data["seat_type"]):
                return "no_seat_available"  # members fit the seats
            org.members[data["user_id"]] = (data["seat_type"], data["role"])
            self.ref.orgs[org_id].seats[data["user_id"]] = data["seat_type"]
            return "ok"
        if kind in {"seats.added", "seats.removed"}:
            seat, quantity = data["seat_type"], data["quantity"]
            if seat not in seats_of_plan:
                return "seat_type_not_in_plan"
            if kind == "seats.added":
                org.seats[seat] = org.seats.get(seat, 0) + quantity
                self.seat_changes[org_id].append((at, self.cycle, seat, quantity))
                return "ok"
            if quantity > kept(seat) - taken(seat):
                return "seat_removal_refused"  # R5: never below the members holding them
            org.pending_removals[seat] = org.pending_removals.get(seat, 0) + quantity
            return "ok"
        if kind == "credits.purchased":
            if not org.spec.self_serve:
                return "not_self_serve"
            if data["purchase_id"] in org.purchases:
                return "duplicate_purchase"
            amount = nano(data["amount"])
            org.purchases[data["purchase_id"]] = amount
            self.ref.orgs[org_id].balance += amount
            self.buys.append(Buy(org_id, data["purchase_id"], at, amount, self.cycle))
            # The purchase lifts the credit stop at once (R16): the stop of an earlier
            # purchase cycle no longer holds.
            for cycle in sorted(org.credit_stops):
                self.notices.add(("resumed", org_id, None, None, "credits_exhausted", str(cycle)))
            org.credit_stops.clear()
            return "ok"
        if kind == "spend_cap.set":
            user, limit = data["user_id"], data["limit"]
            cap = None if limit is None else nano(limit)
            if user is None:
                org.org_cap = cap
                return "ok"
            if user not in org.members:
                return "unknown_member"
            org.user_caps.pop(user, None)
            if cap is not None:
                org.user_caps[user] = cap
            return "ok"
        raise AssertionError(f"the model does not know {kind}")

    def _create(self, org_id: str, data: dict[str, Any], at: datetime) -> None:
        spec = self.specs.get(org_id)
        assert spec is not None, f"the scenario creates no org {org_id}"
        thresholds = tuple(data.get("notification_thresholds", DEFAULT_THRESHOLDS))
        seats = {seat: n for seat, n in data["seats"].items() if n}
        self.orgs[org_id] = OrgState(spec, thresholds, seats=dict(seats))
        self.ref.org(org_id, spec.plan, spec.mode, {}, 0)
        for seat, n in seats.items():
            self.seat_changes[org_id].append((at, self.cycle, seat, n))

    def api_call(self, org_id: str, kind: str, data: dict[str, Any]) -> None:
        """An owner control that the API appended at least once: purchases count once
        (by purchase_id), caps are set by value."""
        event = {"org_id": org_id, "type": kind, "data": data, "actor": None}
        event["occurred_at"] = "2026-11-01T00:00:00Z"  # the API stamps its clock: later
        assert self._fold(event) in {"ok", "duplicate_purchase"}

    # -- usage ----------------------------------------------------------------------------

    def usage(self, record: Record) -> str:
        """The outcome of a usage record: "accepted", "duplicate" or a dead-letter reason."""
        if record.poison is not None:
            return record.poison
        event = record.event
        assert event is not None
        if event["model"] not in RATES:
            return "unknown_model"
        org_id, user = event["org_id"], event["user_id"]
        if org_id not in self.orgs:
            return "unknown_org"
        self._touched[(org_id, event["occurred_at"][:7])].add(user)
        self._touched_orgs.add(org_id)
        accepted, duplicates = len(self.ref.accepted), self.ref.duplicates
        self.ref.usage(event)
        if len(self.ref.accepted) > accepted:
            _org, _user, model, _surface, month, _cost, billed = self.ref.rows[event["event_id"]]
            tokens = sum(
                event[name]
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                )
            )
            self.rows.append(Row(org_id, user, model, month, tokens, billed, self.cycle))
            return "accepted"
        return "duplicate" if self.ref.duplicates > duplicates else "event_id_conflict"

    def included(self, event_id: str) -> int:
        _o, _u, _m, _s, _month, cost, billed = self.ref.rows[event_id]
        return cost - billed

    def end_of_usage(self) -> None:  # noqa: PLR0912 - one rule per branch
        """What the phase's usage notified (see the module docstring)."""
        for (org_id, month), users in sorted(self._touched.items()):
            org = self.orgs[org_id]
            spend = self.ref.spend[(org_id, month)]
            subjects: list[tuple[str | None, int, int | None]] = [(None, spend["org"], org.org_cap)]
            subjects += [(u, spend[f"u:{u}"], org.user_caps.get(u)) for u in sorted(users)]
            for user, spent, cap in subjects:
                if cap is None:
                    continue
                for text in org.thresholds:
                    fraction = Fraction(Decimal(text))
                    if spent * fraction.denominator >= fraction.numerator * cap:
                        self.notices.add(("threshold_reached", org_id, user, month, text))
                if spent >= cap:
                    reason = "org_cap_reached" if user is None else "user_cap_reached"
                    self.notices.add(("stopped", org_id, user, month, reason, str(cap)))
            if org.spec.plan == "seat_based" and not org.spec.extra_usage:
                for user in users:
                    seat = org.members.get(user, ("", ""))[0]
                    allowance = ALLOWANCE.get(seat, 0)
                    if allowance and spend[f"a:{user}"] >= allowance:
                        self.notices.add(
                            (
                                "stopped",
                                org_id,
                                user,
                                month,
                                "seat_allowance_exhausted",
                                "allowance",
                            )
                        )
        for org_id in sorted(self._touched_orgs):
            org = self.orgs[org_id]
            if not org.spec.self_serve:
                continue
            balance, cycle = self.ref.orgs[org_id].balance, len(org.purchases)
            if balance <= 0:
                self.notices.add(("stopped", org_id, None, None, "credits_exhausted", str(cycle)))
                org.credit_stops.add(cycle)
            for level in BALANCE_LEVELS:
                if balance < level:
                    self.notices.add(("balance_low", org_id, level, cycle))
        self._touched.clear()
        self._touched_orgs.clear()

    # -- what Redis must hold -------------------------------------------------------------

    def gate(self, org_id: str, user: str, surface: str, month: str) -> str | None:
        """R15: the first reason that applies, or None (allowed)."""
        org = self.orgs[org_id]
        if user not in org.members:
            return "unknown_member"
        seat = org.members[user][0]
        spend = self.ref.spend[(org_id, month)]
        reasons = []
        if surface not in SEAT_SURFACES[seat]:
            reasons.append("surface_not_in_seat")
        seat_based = org.spec.plan == "seat_based"
        exhausted = seat_based and spend[f"a:{user}"] >= ALLOWANCE[seat]
        # credits pay for billed usage only (docs/decisions.md): inside the allowance the
        # next request costs nothing
        next_billed = not seat_based or exhausted
        if org.spec.self_serve and next_billed and self.ref.orgs[org_id].balance <= 0:
            reasons.append("credits_exhausted")
        if org.org_cap is not None and spend["org"] >= org.org_cap:
            reasons.append("org_cap_reached")
        cap = org.user_caps.get(user)
        if cap is not None and spend[f"u:{user}"] >= cap:
            reasons.append("user_cap_reached")
        if exhausted and not org.spec.extra_usage:
            reasons.append("seat_allowance_exhausted")
        return reasons[0] if reasons else None

    # -- what the documents must say ------------------------------------------------------

    def _usage_lines(
        self, org_id: str, month: str, late: bool
    ) -> list[tuple[str, str, str, int, int]]:
        """(month, user, model, tokens, billed) per month × member × model: this month's
        usage billed with it, or (late) earlier months' usage that came after them."""
        sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        cycle = self.cycle_of(month)
        for row in self.rows:
            if row.org != org_id or row.cycle > cycle:
                continue
            if late and not (row.month < month and row.cycle == cycle and cycle > 0):
                continue
            if not late and row.month != month:
                continue
            entry = sums[(row.month, row.user, row.model)]
            entry[0] += row.tokens if row.billed > 0 else 0
            entry[1] += row.billed
        return [(m, u, model, t, b) for (m, u, model), (t, b) in sorted(sums.items()) if b]

    def cycle_of(self, month: str) -> int:
        return 0 if month == START.strftime("%Y-%m") else 1

    def _legacy_seats(self, org_id: str, month: str) -> dict[str, int]:
        org = self.orgs[org_id]
        if org.spec.plan != "seat_based":
            return {}
        seats: dict[str, int] = defaultdict(int)
        for at, cycle, seat, n in self.seat_changes[org_id]:
            if at < month_start(month) and cycle <= self.cycle_of(month):
                seats[seat] += n
        return dict(seats)

    def documents(self, month: str) -> dict[str, dict[str, Any]]:
        """Every document `billing run --month` writes, by id, as the reference biller
        computes it: each org's usage document (+ legacy monthly seat invoice) and the
        seat invoices its account events issued during the month."""
        documents: dict[str, dict[str, Any]] = {}
        for org_id, org in sorted(self.orgs.items()):
            opening = 0
            for billed in sorted({START.strftime("%Y-%m"), month}):
                inputs = self._month(org_id, org, billed, opening)
                if billed == month:
                    for document in ref_biller.month_documents(inputs):
                        documents[document["document_id"]] = document
                elif org.spec.self_serve:
                    opening = ref_biller.credit_statement(inputs)[1]
            documents.update(self._seat_documents(org_id, month))
        return documents

    def _month(self, org_id: str, org: OrgState, month: str, opening: int) -> ref_biller.Month:
        cycle = self.cycle_of(month)
        buys = []
        for b in self.buys:
            bought = b.occurred_at.strftime("%Y-%m")
            # on the statement: bought this month, or bought earlier and stored only after
            # that month's statement was issued (late)
            late = bought < month and b.cycle == cycle > 0
            if b.org == org_id and b.cycle <= cycle and (bought == month or late):
                buys.append(ref_biller.Buy(b.purchase_id, b.occurred_at, b.amount, late))
        return ref_biller.Month(
            org_id=org_id,
            month=month,
            self_serve=org.spec.self_serve,
            usage=[
                ref_biller.Usage(u, model, t, b)
                for _m, u, model, t, b in self._usage_lines(org_id, month, late=False)
            ],
            late=[
                ref_biller.Late(m, u, model, t, b)
                for m, u, model, t, b in self._usage_lines(org_id, month, late=True)
            ],
            purchases=buys,
            opening_cents=opening,
            legacy_seats=self._legacy_seats(org_id, month),
        )

    def _seat_documents(self, org_id: str, month: str) -> dict[str, dict[str, Any]]:
        biller = ref_biller.ReferenceSeatBiller()
        issued: list[dict[str, Any]] = []
        outcomes = self.seat_outcomes[org_id]
        for event, accepted in zip(self.seat_log[org_id], outcomes, strict=True):
            as_ref = {**event, "occurred_at": parse_stamp(event["occurred_at"])}
            ref_accepted, documents = biller.apply(as_ref)
            assert ref_accepted == accepted, f"the two references disagree on {event}"
            issued += documents
        start = month_start(month)
        end = (start + timedelta(days=32)).replace(day=1)
        return {d["document_id"]: d for d in issued if start <= parse_stamp(d["issued_at"]) < end}
