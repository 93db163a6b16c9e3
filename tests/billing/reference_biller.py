"""An independent, deliberately simple reference biller, written from SPEC §2 and §4.

It imports nothing from `billing/`: its arithmetic is `Decimal` dollars and `Fraction`
months, its seat prices are SPEC §5's table, and it tracks an org's plan, term and seats
itself from the raw account events. Its documents are plain dicts in the SPEC §4 JSON
shape (the same as `Document.model_dump(mode="json")`, keys in the SPEC's order), so
`canonical_json(expected)` must equal `document.model_dump_json()` byte for byte.

Only the wording of descriptions and the id/period conventions are copied from the code
under test (they are presentation, not rules); amounts, roundings, which documents exist,
their periods and their numbering are derived here from the rules:

- SPEC §2 money: each line rounded to cents half-up (half away from zero); a total is
  the sum of its rounded lines; a statement adds up on paper.
- R3: at a usage-based term's start, `seats × monthly fee × 12`.
- R4: seats added mid-term, `quantity × monthly fee × remaining_months`. Here a month is
  counted day by day: every remaining day of the term is worth 1 / (days in its term
  month), a term month running from the term's day of the month to the same day of the
  next (the month's last day when it has no such day) — exactly the SPEC's formula for a
  term that starts on the 1st, and 12 months for any whole term.
- R5 (as amended by the project): a removal, self-serve or sales-assisted, waits for the
  renewal, never a credit; refused when it would leave fewer seats than members on them.
- Members fit the seats: a member joins (or moves to) a seat type only while the seats
  kept of that type (held minus pending removals) exceed the members on it.
- R6 (docs/decisions.md): legacy seat-based seats pay by the month; seats arriving
  mid-month pay `quantity × fee × days left (counting the day) / days in the month`; the
  month's 001 is the batch's monthly invoice, so these start at 002.
- R7: at renewal a legacy org moves every seat to `enterprise`; an early migration
  (`plan.migration_requested`) invoices its enterprise seats for the rest of the term,
  and a removal still pending takes effect at the renewal as before (migration loses
  nothing).
- docs/decisions.md: a term renews by itself on its anniversary (pending removals then
  apply and legacy orgs migrate, as at any renewal); an org created more than a year
  after its contract began joins in the term that holds its creation; an annual invoice
  is issued at the later of its event and the term's start.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from typing import Any

NANO_PER_USD = 10**9
CENT = Decimal("0.01")
ZERO = Decimal("0.00")

# SPEC §5: USD per seat per month.
SEAT_FEES_USD: dict[str, Decimal] = {
    "enterprise": Decimal("40.00"),
    "chat": Decimal("30.00"),
    "chat_claude_code": Decimal("60.00"),
    "standard": Decimal("30.00"),
    "premium": Decimal("150.00"),
}
PLAN_SEATS: dict[str, frozenset[str]] = {
    "usage_based": frozenset({"enterprise", "chat", "chat_claude_code"}),
    "seat_based": frozenset({"standard", "premium"}),
}

Doc = dict[str, Any]


# --- money --------------------------------------------------------------------------


def exact_usd_of_nano(nano: int) -> Fraction:
    return Fraction(nano, NANO_PER_USD)


def round_cents(amount_usd: Fraction) -> Decimal:
    """Cents, half away from zero (Decimal's ROUND_HALF_UP), from an exact amount."""
    with localcontext() as ctx:
        ctx.prec = 100  # far more digits than any amount here; exact halves stay exact
        value = (Decimal(amount_usd.numerator) / Decimal(amount_usd.denominator)).quantize(
            CENT, rounding=ROUND_HALF_UP
        )
    return value if value != 0 else ZERO  # never "-0.00"


def money(value: Decimal) -> str:
    value = value.quantize(CENT)
    return f"{value if value != 0 else ZERO:f}"


def four_places(value: Fraction) -> str:
    with localcontext() as ctx:
        ctx.prec = 100
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        return f"{exact.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):f}"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(document: Doc) -> str:
    """The bytes a document must serialise to (compact, UTF-8, keys in SPEC order)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


# --- calendar -----------------------------------------------------------------------


def days_in_month(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def first_of_next_month(day: date) -> date:
    return day.replace(day=1) + timedelta(days=days_in_month(day))


def month_bounds(month: str) -> tuple[date, date]:
    year, number = (int(part) for part in month.split("-"))
    start = date(year, number, 1)
    return start, first_of_next_month(start)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def term_end(start: date) -> date:
    """One year later (a Feb 29 start ends on Mar 1)."""
    if start.month == 2 and start.day == 29:
        return date(start.year + 1, 3, 1)
    return date(start.year + 1, start.month, start.day)


def term_containing(explicit_start: date, day: date) -> date:
    """The term that holds `day`: terms roll over on their anniversary."""
    start = explicit_start
    while term_end(start) <= day:
        start = term_end(start)
    return start


def term_month_starts(term: date) -> list[date]:
    """The first day of each of the term's 12 months, and the term's end."""
    starts = []
    for k in range(12):
        year, month = term.year + (term.month - 1 + k) // 12, (term.month - 1 + k) % 12 + 1
        starts.append(date(year, month, min(term.day, calendar.monthrange(year, month)[1])))
    return [*starts, term_end(term)]


def months_left(term: date, since: date) -> Fraction:
    """R4's remaining_months, one day at a time: each day from `since` to the term's end
    is worth 1/(days in the term month it falls in)."""
    bounds = term_month_starts(term)
    months = Fraction(0)
    day = since
    while day < bounds[-1]:
        k = max(i for i in range(12) if bounds[i] <= day)
        months += Fraction(1, (bounds[k + 1] - bounds[k]).days)
        day += timedelta(days=1)
    return months


def rest_of_month_share(day: date) -> Fraction:
    total = days_in_month(day)
    return Fraction(total - day.day + 1, total)


# --- monthly documents (R6, R11, R12, G5) ----------------------------------------------


@dataclass(frozen=True)
class Usage:
    user_id: str
    model: str
    tokens: int
    nano: int


@dataclass(frozen=True)
class Late:
    month: str
    user_id: str
    model: str
    tokens: int
    nano: int


@dataclass(frozen=True)
class Buy:
    purchase_id: str
    occurred_at: datetime
    nano: int
    late: bool = False


@dataclass(frozen=True)
class Month:
    org_id: str
    month: str
    self_serve: bool
    usage: Sequence[Usage] = ()
    late: Sequence[Late] = ()
    purchases: Sequence[Buy] = ()
    opening_cents: int = 0
    legacy_seats: Mapping[str, int] = field(default_factory=dict)


def line(
    description: str, exact_usd: Fraction, quantity: str, user: str | None, model: str | None
) -> tuple[Doc, Decimal]:
    amount = round_cents(exact_usd)
    return {
        "description": description,
        "user_id": user,
        "model": model,
        "quantity": quantity,
        "amount": money(amount),
    }, amount


def usage_lines(usage: Iterable[Usage], late: Iterable[Late]) -> tuple[list[Doc], Decimal]:
    lines: list[Doc] = []
    total = ZERO
    for item in sorted(usage, key=lambda u: (u.user_id, u.model, u.tokens, u.nano)):
        row, amount = line(
            f"{item.model} usage",
            exact_usd_of_nano(item.nano),
            str(item.tokens),
            item.user_id,
            item.model,
        )
        lines.append(row)
        total += amount
    for adjustment in sorted(late, key=lambda u: (u.month, u.user_id, u.model, u.tokens, u.nano)):
        row, amount = line(
            f"Adjustment: {adjustment.model} usage in {adjustment.month}, received after that "
            "month's document was issued",
            exact_usd_of_nano(adjustment.nano),
            str(adjustment.tokens),
            adjustment.user_id,
            adjustment.model,
        )
        lines.append(row)
        total += amount
    return lines, total


def header(org_id: str, kind: str, period: str, sequence: int, start: date, end: date) -> Doc:
    return {
        "document_id": f"{org_id}.{kind}.{period}.{sequence:03d}",
        "org_id": org_id,
        "kind": kind,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "currency": "USD",
    }


def usage_invoice(month: Month) -> Doc:
    start, end = month_bounds(month.month)
    lines, total = usage_lines(month.usage, month.late)
    return {
        **header(month.org_id, "usage_invoice", month.month, 1, start, end),
        "lines": lines,
        "total": money(total),
        "issued_at": stamp(midnight(end)),
    }


def credit_statement(month: Month) -> tuple[Doc, int]:
    """The statement and its closing balance in cents (the next opening)."""
    start, end = month_bounds(month.month)
    lines: list[Doc] = []
    bought = ZERO
    for buy in sorted(month.purchases, key=lambda b: (b.occurred_at, b.purchase_id)):
        description = f"Credit purchase {buy.purchase_id}"
        if buy.late:
            description += (
                f" of {buy.occurred_at.astimezone(UTC).date().isoformat()}, received after "
                "that month's statement was issued"
            )
        row, amount = line(description, exact_usd_of_nano(buy.nano), "1", None, None)
        lines.append(row)
        bought += amount
    more, used = usage_lines(month.usage, month.late)
    lines += more
    opening = Decimal(month.opening_cents) / 100
    closing = opening + bought - used
    statement = {
        **header(month.org_id, "credit_statement", month.month, 1, start, end),
        "lines": lines,
        "total": money(bought - used),
        "issued_at": stamp(midnight(end)),
        "opening_balance": money(opening),
        "purchases": money(bought),
        "usage": money(used),
        "closing_balance": money(closing),
    }
    return statement, int(closing * 100)


def monthly_seat_invoice(org_id: str, month: str, seats: Mapping[str, int]) -> Doc | None:
    start, end = month_bounds(month)
    rows = [
        line(
            f"{seat} seats, {n} × monthly fee",
            Fraction(SEAT_FEES_USD[seat]) * n,
            str(n),
            None,
            None,
        )
        for seat, n in sorted(seats.items())
        if n > 0
    ]
    if not rows:
        return None
    return seat_document(org_id, month, 1, start, end, midnight(end), rows)


def month_documents(month: Month) -> list[Doc]:
    documents = [credit_statement(month)[0] if month.self_serve else usage_invoice(month)]
    seats = monthly_seat_invoice(month.org_id, month.month, month.legacy_seats)
    if seats is not None:
        documents.append(seats)
    return documents


# --- seat invoices from account events (R3–R7) ---------------------------------------------


def seat_document(
    org_id: str,
    period: str,
    sequence: int,
    start: date,
    end: date,
    issued_at: datetime,
    rows: list[tuple[Doc, Decimal]],
) -> Doc:
    return {
        **header(org_id, "seat_invoice", period, sequence, start, end),
        "lines": [row for row, _ in rows],
        "total": money(sum((amount for _, amount in rows), ZERO)),
        "issued_at": stamp(issued_at),
    }


@dataclass
class ReferenceSeatBiller:
    """One org's account, tracked from raw event dicts, and the seat invoices it owes.
    Its contract renews by itself: before each event (and on `roll_to`), every
    anniversary that has come renews the term."""

    org_id: str | None = None
    plan: str = ""
    self_serve: bool = False
    term_start: date = date.min
    seats: dict[str, int] = field(default_factory=dict)
    pending_removals: dict[str, int] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)  # user → seat type
    last_sequence: dict[str, int] = field(default_factory=dict)
    # Seats invoiced per term: an explicit renewal may come after seats were already
    # added to (and invoiced for) the term it starts.
    invoiced: dict[date, dict[str, int]] = field(default_factory=dict)

    def apply(self, event: Mapping[str, Any]) -> tuple[bool, list[Doc]]:
        """(accepted?, the seat invoices the anniversaries before it and the event
        create)."""
        at: datetime = event["occurred_at"]
        renewals = self.roll_to(at.date()) if self.org_id is not None else []
        accepted, documents = self._apply(event)
        return accepted, renewals + documents

    def roll_to(self, day: date) -> list[Doc]:
        """Renew the term at every anniversary up to `day` (inclusive)."""
        documents: list[Doc] = []
        while term_end(self.term_start) <= day:
            start = term_end(self.term_start)
            documents += self._renew(start, midnight(start))
        return documents

    def _kept(self, seat: str) -> int:
        return self.seats.get(seat, 0) - self.pending_removals.get(seat, 0)

    def _taken(self, seat: str) -> int:
        return sum(1 for held in self.members.values() if held == seat)

    def _apply(self, event: Mapping[str, Any]) -> tuple[bool, list[Doc]]:  # noqa: PLR0911, PLR0912
        kind, data = event["type"], event.get("data", {})
        at: datetime = event["occurred_at"]
        if kind == "org.created":
            if self.org_id is not None:
                return False, []
            return True, self._create(event["org_id"], data, at)
        if self.org_id is None:
            return False, []
        if kind in {"member.added", "member.updated"}:
            user, seat = str(data["user_id"]), str(data["seat_type"])
            if (kind == "member.added") == (user in self.members):
                return False, []
            if seat not in PLAN_SEATS[self.plan]:
                return False, []
            if self.members.get(user) != seat and self._taken(seat) >= self._kept(seat):
                return False, []
            self.members[user] = seat
            return True, []
        if kind == "member.removed":
            if str(data["user_id"]) not in self.members:
                return False, []
            del self.members[str(data["user_id"])]
            return True, []
        if kind == "seats.added":
            seat, quantity = str(data["seat_type"]), int(data["quantity"])
            if seat not in PLAN_SEATS[self.plan]:
                return False, []
            self.seats[seat] = self.seats.get(seat, 0) + quantity
            return True, self._arrived({seat: quantity}, at, "added")
        if kind == "seats.removed":
            seat, quantity = str(data["seat_type"]), int(data["quantity"])
            if seat not in PLAN_SEATS[self.plan] or quantity > self._kept(seat) - self._taken(seat):
                return False, []
            self.pending_removals[seat] = self.pending_removals.get(seat, 0) + quantity
            return True, []  # R5: never a credit; it takes effect at renewal
        if kind == "plan.migration_requested":
            if self.plan != "seat_based":
                return False, []
            self._migrate()
            return True, self._arrived(dict(self.seats), at, "migrated")
        if kind == "contract.renewed":
            new_start = _as_date(data["term_start"])
            if new_start <= self.term_start:
                return False, []
            return True, self._renew(new_start, at)
        raise AssertionError(f"the reference does not model {kind}")

    def _create(self, org_id: str, data: Mapping[str, Any], at: datetime) -> list[Doc]:
        self.org_id = org_id
        self.plan = str(data["plan"])
        self.self_serve = str(data["billing_mode"]) == "self_serve"
        # A contract older than a year joins here in the term that holds the creation.
        self.term_start = term_containing(_as_date(data["term_start"]), at.date())
        self.seats = {str(seat): int(n) for seat, n in data["seats"].items() if int(n) > 0}
        if self.plan == "seat_based":
            return self._arrived(dict(self.seats), at, "added")
        return self._annual(at)

    def _migrate(self) -> None:
        total = sum(self.seats.values())
        pending = sum(self.pending_removals.values())
        self.plan = "usage_based"
        self.seats = {"enterprise": total} if total else {}
        self.pending_removals = {"enterprise": pending} if pending else {}
        self.members = dict.fromkeys(self.members, "enterprise")

    def _renew(self, new_start: date, at: datetime) -> list[Doc]:
        kept = {seat: self._kept(seat) for seat in self.seats if self._kept(seat) > 0}
        self.seats, self.pending_removals, self.term_start = kept, {}, new_start
        legacy = set(self.seats) | set(self.members.values())
        if self.plan == "seat_based" or any(seat != "enterprise" for seat in legacy):
            self._migrate()  # R7
        return self._annual(at)

    def _next(self, period: str, first: int) -> int:
        sequence = max(self.last_sequence.get(period, 0) + 1, first)
        self.last_sequence[period] = sequence
        return sequence

    def _annual(self, at: datetime) -> list[Doc]:
        start = self.term_start
        paid = self.invoiced.setdefault(start, {})
        due = {seat: n - paid.get(seat, 0) for seat, n in sorted(self.seats.items())}
        rows = [
            line(
                f"{seat} seats, {n} × 12 months",
                Fraction(SEAT_FEES_USD[seat]) * n * 12,
                str(n),
                None,
                None,
            )
            for seat, n in due.items()
            if n > 0
        ]
        if not rows:
            return []
        for seat, n in due.items():
            paid[seat] = paid.get(seat, 0) + max(n, 0)
        assert self.org_id is not None
        period = start.isoformat()
        issued = max(at, midnight(start))
        return [
            seat_document(
                self.org_id, period, self._next(period, 1), start, term_end(start), issued, rows
            )
        ]

    def _arrived(self, seats: Mapping[str, int], at: datetime, why: str) -> list[Doc]:
        seats = {seat: n for seat, n in seats.items() if n > 0}
        if not seats:
            return []
        assert self.org_id is not None
        day = at.astimezone(UTC).date()
        if self.plan == "seat_based":  # R6: the rest of this month only
            share = rest_of_month_share(day)
            rows = [
                line(
                    f"{n} {seat} seats from {day.isoformat()}, {four_places(share)} of a month",
                    Fraction(SEAT_FEES_USD[seat]) * n * share,
                    str(n),
                    None,
                    None,
                )
                for seat, n in sorted(seats.items())
            ]
            period = day.strftime("%Y-%m")
            return [
                seat_document(
                    self.org_id,
                    period,
                    self._next(period, 2),
                    day,
                    first_of_next_month(day),
                    at,
                    rows,
                )
            ]
        term = term_containing(self.term_start, day)
        paid = self.invoiced.setdefault(term, {})
        for seat, n in seats.items():
            paid[seat] = paid.get(seat, 0) + n
        since = max(day, term)
        months = months_left(term, since)
        rows = [
            line(
                f"{n} {seat} seats {why} {since.isoformat()}, {four_places(months)} months "
                "remaining",
                Fraction(SEAT_FEES_USD[seat]) * n * months,
                str(n),
                None,
                None,
            )
            for seat, n in sorted(seats.items())
        ]
        period = term.isoformat()
        return [
            seat_document(
                self.org_id, period, self._next(period, 1), since, term_end(term), at, rows
            )
        ]


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
