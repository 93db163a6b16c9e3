"""`billing/` against the independent reference biller (`reference_biller.py`): random
months of usage, late usage, purchases and legacy seats, and random account histories,
must give exactly the reference's documents — byte for byte — and the SPEC §2 money
invariants must hold on every document."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar

from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from billing.accounts import Applied, OrgAccount, apply_account_event, renewals_due
from billing.documents import LateUsage, Purchase, UsageTotal
from billing.monthly import MonthInputs, closing_cents, month_documents
from billing.pricing import PriceBook, default_price_book_text
from schemas.account import ACCOUNT_EVENT_ADAPTER, BillingMode, SeatType
from schemas.documents import CreditStatement, Document
from tests.billing import reference_biller as ref

BOOK = PriceBook.from_json(default_price_book_text())
ORG = "org_ref"
HALF_CENT_NANO = 5_000_000
NANO_PER_CENT = 10_000_000
USERS = ("u_ann", "u_bob", "u_cy")
MODELS = ("claude-haiku-4-5", "claude-opus-4-5", "claude-sonnet-4-5")
LEGACY_SEATS = (SeatType.STANDARD, SeatType.PREMIUM)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

T = TypeVar("T")


def usd(amount: str) -> Decimal:
    """A document amount ("12.34") as exact dollars."""
    return Decimal(amount)


# --- strategies: one org's month --------------------------------------------------------

# Amounts in nano-USD, biased towards the rounding edges: exact half cents (5_000_000
# nano), one nano either side of them, whole cents and zero.
EDGE_NANO = st.sampled_from(
    [0, 1, HALF_CENT_NANO - 1, HALF_CENT_NANO, HALF_CENT_NANO + 1, NANO_PER_CENT, 10**9]
)
HALF_CENTS = st.integers(0, 10**6).map(lambda c: c * NANO_PER_CENT + HALF_CENT_NANO)
NANO = st.one_of(EDGE_NANO, HALF_CENTS, st.integers(0, 10**13))
TOKENS = st.integers(0, 10**9)


def shift_month(month: str, by: int) -> str:
    year, number = (int(part) for part in month.split("-"))
    index = year * 12 + number - 1 + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


MONTHS = st.builds(lambda y, m: f"{y:04d}-{m:02d}", st.integers(2025, 2030), st.integers(1, 12))


@dataclass(frozen=True)
class Case:
    """A month as both sides see it."""

    inputs: MonthInputs
    reference: ref.Month


@st.composite
def month_data(
    draw: st.DrawFn, month: str, self_serve: bool, opening: int = 0
) -> tuple[MonthInputs, ref.Month]:
    usage = draw(
        st.dictionaries(
            st.tuples(st.sampled_from(USERS), st.sampled_from(MODELS)),
            st.tuples(TOKENS, NANO),
            max_size=6,
        )
    )
    late = draw(
        st.dictionaries(
            st.tuples(st.integers(1, 3), st.sampled_from(USERS), st.sampled_from(MODELS)),
            st.tuples(TOKENS, NANO),
            max_size=4,
        )
    )
    purchases: list[tuple[str, datetime, int, bool]] = []
    if self_serve:
        start = datetime.fromisoformat(f"{month}-01T00:00:00+00:00")
        for index, (late_one, offset, amount) in enumerate(
            draw(
                st.lists(
                    st.tuples(
                        st.booleans(),
                        st.integers(0, 27 * 86_400),
                        st.one_of(st.integers(1, 10**13), HALF_CENTS.filter(bool)),
                    ),
                    max_size=4,
                )
            )
        ):
            moment = start + timedelta(seconds=offset)
            if late_one:  # bought last month, stored after its statement
                moment -= timedelta(days=28)
            purchases.append((f"pay_{index}", moment, amount, late_one))
    legacy = draw(
        st.one_of(
            st.just({}),
            st.dictionaries(st.sampled_from(LEGACY_SEATS), st.integers(0, 50), max_size=2),
        )
    )
    inputs = MonthInputs(
        org_id=ORG,
        month=month,
        billing_mode=BillingMode.SELF_SERVE if self_serve else BillingMode.SALES_ASSISTED,
        usage=[UsageTotal(u, m, t, a) for (u, m), (t, a) in usage.items()],
        late_usage=[
            LateUsage(shift_month(month, -back), u, m, t, a)
            for (back, u, m), (t, a) in late.items()
        ],
        purchases=[Purchase(p, at, a, late=lt) for p, at, a, lt in purchases],
        opening_cents=opening,
        legacy_seats=legacy,
    )
    reference = ref.Month(
        org_id=ORG,
        month=month,
        self_serve=self_serve,
        usage=[ref.Usage(u, m, t, a) for (u, m), (t, a) in usage.items()],
        late=[
            ref.Late(shift_month(month, -back), u, m, t, a) for (back, u, m), (t, a) in late.items()
        ],
        purchases=[ref.Buy(p, at, a, lt) for p, at, a, lt in purchases],
        opening_cents=opening,
        legacy_seats={seat.value: n for seat, n in legacy.items()},
    )
    return inputs, reference


@st.composite
def months(draw: st.DrawFn) -> Case:
    self_serve = draw(st.booleans())
    opening = draw(st.one_of(st.just(0), st.integers(-(10**6), 10**9))) if self_serve else 0
    inputs, reference = draw(month_data(draw(MONTHS), self_serve, opening))
    return Case(inputs, reference)


def dumped(documents: list[Document]) -> list[dict[str, Any]]:
    return [document.model_dump(mode="json") for document in documents]


# --- monthly documents -------------------------------------------------------------------


@FAST
@given(months())
def test_month_documents_equal_the_reference(case: Case) -> None:
    """R6/R11/R12/G5 + SPEC §2 rounding: every document, field and byte as the reference
    computes it from the rules."""
    documents = month_documents(case.inputs, BOOK)
    expected = ref.month_documents(case.reference)
    assert dumped(documents) == expected
    assert [d.model_dump_json() for d in documents] == [ref.canonical_json(e) for e in expected]
    kinds = [d.kind.value for d in documents]
    usage_kind = "credit_statement" if case.reference.self_serve else "usage_invoice"
    assert kinds == [usage_kind] + (["seat_invoice"] * (len(kinds) - 1))
    assert len({d.document_id for d in documents}) == len(documents)


def assert_adds_up(document: Document) -> None:
    """SPEC §2: the total is the sum of the rounded lines; a statement adds up on paper."""
    lines = [usd(line.amount) for line in document.lines]
    if not isinstance(document, CreditStatement):
        assert usd(document.total) == sum(lines, Decimal(0))
        return
    bought = sum(
        (usd(li.amount) for li in document.lines if li.description.startswith("Credit purchase")),
        Decimal(0),
    )
    used = sum((usd(li.amount) for li in document.lines if li.model is not None), Decimal(0))
    assert len(document.lines) == sum(
        1 for li in document.lines if li.model is not None or li.description.startswith("Credit")
    )
    assert usd(document.purchases) == bought
    assert usd(document.usage) == used
    assert usd(document.total) == bought - used
    assert usd(document.closing_balance) == (
        usd(document.opening_balance) + usd(document.purchases) - usd(document.usage)
    )


@FAST
@given(months())
def test_totals_and_conservation(case: Case) -> None:
    """Every total is the sum of its rounded lines. Conservation: each usage line is
    traced back (by its user, model, tokens and — for an adjustment — month) to exactly
    one input, so the exact amounts behind the lines sum to the sum of the inputs, and
    every line is within half a cent of its exact amount."""
    documents = month_documents(case.inputs, BOOK)
    for document in documents:
        assert_adds_up(document)
    usage_doc = documents[0]
    unmatched: dict[tuple[str, str, str, str], list[int]] = {}
    for u in case.inputs.usage:
        unmatched.setdefault(("", u.user_id, u.model, str(u.tokens)), []).append(u.amount_nano_usd)
    for late in case.inputs.late_usage:
        key = (late.month, late.user_id, late.model, str(late.tokens))
        unmatched.setdefault(key, []).append(late.amount_nano_usd)
    exact_total = sum(amount for amounts in unmatched.values() for amount in amounts)
    behind_lines = 0
    for line in usage_doc.lines:
        if line.model is None:  # a purchase
            continue
        assert line.user_id is not None
        found = re.fullmatch(r"Adjustment: (\S+) usage in (\d{4}-\d{2}), .*", line.description)
        month = found.group(2) if found else ""
        candidates = unmatched.get((month, line.user_id, line.model, line.quantity), [])
        line_nano = int(usd(line.amount) * 100) * NANO_PER_CENT
        exact = next(a for a in candidates if abs(line_nano - a) <= HALF_CENT_NANO)
        candidates.remove(exact)
        behind_lines += exact
    assert not any(unmatched.values())  # nothing lost
    assert behind_lines == exact_total  # nothing counted twice
    billed = usd(usage_doc.usage if isinstance(usage_doc, CreditStatement) else usage_doc.total)
    count = len(case.inputs.usage) + len(case.inputs.late_usage)
    assert abs(int(billed * 100) * NANO_PER_CENT - exact_total) <= HALF_CENT_NANO * count


@st.composite
def statement_chains(draw: st.DrawFn) -> tuple[list[MonthInputs], list[ref.Month]]:
    first = draw(MONTHS)
    opening = draw(st.integers(-(10**4), 10**7))
    chain = []
    for offset in range(draw(st.integers(2, 5))):
        chain.append(draw(month_data(shift_month(first, offset), True, opening)))
    return [inputs for inputs, _ in chain], [reference for _, reference in chain]


@settings(max_examples=60, deadline=None)
@given(statement_chains())
def test_a_chain_of_statements_carries_each_closing_into_the_next_opening(
    chain: tuple[list[MonthInputs], list[ref.Month]],
) -> None:
    """R11 + SPEC §2: next opening == previous closing; closing = opening + purchases −
    usage on paper; and the whole chain equals the reference's chain."""
    months_in, references = chain
    opening = months_in[0].opening_cents
    ref_opening = references[0].opening_cents
    previous: CreditStatement | None = None
    for inputs, reference in zip(months_in, references, strict=True):
        documents = month_documents(replace(inputs, opening_cents=opening), BOOK)
        statement = documents[0]
        assert isinstance(statement, CreditStatement)
        expected, ref_closing = ref.credit_statement(replace(reference, opening_cents=ref_opening))
        assert statement.model_dump(mode="json") == expected
        assert_adds_up(statement)
        if previous is not None:
            assert statement.opening_balance == previous.closing_balance
        previous, opening, ref_opening = statement, closing_cents(statement), ref_closing
        assert opening == ref_opening


def shuffled(items: list[T], order: list[int]) -> list[T]:
    """`items` in the order of the keys `order` (cycled), ties kept in place."""
    keys = [(order[i % len(order)], i) for i in range(len(items))]
    return [item for _, item in sorted(zip(keys, items, strict=True), key=lambda x: x[0])]


@FAST
@given(months(), st.lists(st.integers(), min_size=20, max_size=20))
def test_the_same_inputs_in_another_order_give_the_same_bytes(case: Case, order: list[int]) -> None:
    """SPEC §4: the same inputs always give byte-identical files."""
    inputs = case.inputs
    first = [d.model_dump_json() for d in month_documents(inputs, BOOK)]
    again = [d.model_dump_json() for d in month_documents(inputs, BOOK)]
    rebuilt = MonthInputs(
        org_id=inputs.org_id,
        month=inputs.month,
        billing_mode=inputs.billing_mode,
        usage=shuffled(list(inputs.usage), order),
        late_usage=shuffled(list(reversed(inputs.late_usage)), order),
        purchases=shuffled(list(inputs.purchases), order[::-1]),
        opening_cents=inputs.opening_cents,
        legacy_seats=dict(reversed(list(inputs.legacy_seats.items()))),
    )
    assert first == again == [d.model_dump_json() for d in month_documents(rebuilt, BOOK)]


# --- seat invoices from account histories ----------------------------------------------

SEAT_TYPES = tuple(seat.value for seat in SeatType)


def at_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


USERS_POOL = ("ann", "bob", "cy", "dee", "eve")


@st.composite
def account_histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], date]:
    """One org's account events in time order, over up to three terms and more, and the
    day the history is looked at (its contract renewed up to then): creation (up to 10
    days before its term starts, later, or over a year later), then seat additions (on
    the 1st and mid-month), removals, early migrations, early renewals with new terms,
    members joining, leaving and changing seat type, and long waits across anniversaries
    — all with a null actor (authority is tested in test_account_fold)."""
    plan = draw(st.sampled_from(["usage_based", "seat_based"]))
    mode = draw(st.sampled_from(["self_serve", "sales_assisted"]))
    day_of_month = draw(st.one_of(st.just(1), st.integers(1, 28)))
    term_start = date(draw(st.integers(2026, 2030)), draw(st.integers(1, 12)), day_of_month)
    own = sorted(ref.PLAN_SEATS[plan])
    seats = draw(st.fixed_dictionaries(dict.fromkeys(own, st.integers(0, 8))))
    cursor = at_midnight(term_start) + timedelta(
        days=draw(st.sampled_from([0, 0, -10, 3, 17, 40, 400, 800])),
        seconds=draw(st.integers(0, 86_399)),
    )
    events: list[dict[str, Any]] = []

    def emit(kind: str, data: dict[str, Any]) -> None:
        events.append(raw_event(len(events), kind, cursor, data))

    emit(
        "org.created",
        {"plan": plan, "billing_mode": mode, "term_start": term_start.isoformat(), "seats": seats},
    )
    steps = st.sampled_from(
        [
            "add",
            "add",
            "add_on_first",
            "remove",
            "remove",
            "migrate",
            "renew_early",
            "join",
            "join",
            "join",
            "leave",
            "move",
            "wait",
        ]
    )
    short = st.lists(steps, max_size=3)
    scripts = st.one_of(
        st.lists(steps, max_size=14),
        # members, a removal, a migration, a long wait, with random steps between them
        st.builds(
            lambda a, b, c, d: [*a, "join", "join", "remove", *b, "migrate", *c, "wait", *d],
            short,
            short,
            short,
            short,
        ),
    )
    any_seat = st.one_of(st.sampled_from(own), st.sampled_from(SEAT_TYPES))
    for step in draw(scripts):
        if step == "add_on_first":
            cursor = at_midnight(ref.first_of_next_month(cursor.date())) + timedelta(
                seconds=draw(st.sampled_from([0, 0, 59, 43_200]))
            )
        elif step == "wait":
            cursor += timedelta(days=draw(st.integers(100, 400)))
        else:
            cursor += timedelta(days=draw(st.integers(0, 60)), seconds=draw(st.integers(0, 86_399)))
        if step == "migrate":
            emit("plan.migration_requested", {})
        elif step == "renew_early":  # sales renews with new terms, starting today
            emit("contract.renewed", {"term_start": cursor.date().isoformat()})
        elif step in {"join", "leave", "move"}:
            member_kind = {
                "join": "member.added",
                "leave": "member.removed",
                "move": "member.updated",
            }[step]
            data = {"user_id": draw(st.sampled_from(USERS_POOL)), "role": "member"}
            emit(member_kind, {**data, "seat_type": draw(any_seat)})
        elif step != "wait":
            quantity = draw(st.one_of(st.integers(1, 3), st.integers(1, 30)))
            kind = "seats.removed" if step == "remove" else "seats.added"
            emit(kind, {"seat_type": draw(any_seat), "quantity": quantity})
    return events, cursor.date() + timedelta(days=draw(st.integers(0, 500)))


def run_fold(
    history: list[dict[str, Any]],
    looked_at: date,
    on_event: Callable[[dict[str, Any], bool, list[Document], list[Document]], None] = (
        lambda *_: None
    ),
) -> tuple[list[Document], OrgAccount | None]:
    """The fold as the pipeline runs it: before each event, the renewals the renewal
    timer would have appended by then (`renewals_due`); at the end, those due by
    `looked_at`. `on_event` sees each input event, whether it was accepted, the invoices
    of the renewals before it and its own, and its own alone."""
    state: OrgAccount | None = None
    issued: list[Document] = []

    def renew_until(day: date) -> list[Document]:
        nonlocal state
        documents: list[Document] = []
        for renewal in renewals_due(state, day) if state is not None else []:
            renewed = apply_account_event(state, renewal, BOOK)
            assert isinstance(renewed, Applied), renewed
            state = renewed.state
            documents += renewed.invoices
        return documents

    for raw in history:
        event = ACCOUNT_EVENT_ADAPTER.validate_python(raw)
        documents = renew_until(event.occurred_at.date())
        result = apply_account_event(state, event, BOOK)
        own: list[Document] = []
        if isinstance(result, Applied):
            state = result.state
            own = list(result.invoices)
        on_event(raw, isinstance(result, Applied), documents + own, own)
        issued += documents + own
    issued += renew_until(looked_at)
    return issued, state


def raw_event(index: int, kind: str, moment: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": f"ev_{index}",
        "type": kind,
        "org_id": ORG,
        "occurred_at": moment,
        "actor": None,
        "data": data,
    }


# R5 + R7: a sales-assisted removal pending at an early migration must still take
# effect at renewal (no seat is left, so the new term has nothing to invoice).
REMOVAL_THEN_MIGRATION = [
    raw_event(
        0,
        "org.created",
        at_midnight(date(2025, 1, 1)),
        {
            "plan": "seat_based",
            "billing_mode": "sales_assisted",
            "term_start": "2025-01-01",
            "seats": {"premium": 1},
        },
    ),
    raw_event(
        1, "seats.removed", at_midnight(date(2025, 1, 1)), {"seat_type": "premium", "quantity": 1}
    ),
    raw_event(2, "plan.migration_requested", at_midnight(date(2025, 1, 1)), {}),
    raw_event(3, "contract.renewed", at_midnight(date(2026, 1, 1)), {"term_start": "2026-01-01"}),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(account_histories())
@example((REMOVAL_THEN_MIGRATION, date(2026, 6, 1)))
def test_seat_invoices_equal_the_reference(case: tuple[list[dict[str, Any]], date]) -> None:
    """R3–R7 over the contract's life: folding random account events, with the renewals
    due on each anniversary, gives the reference's seat invoices (same acceptances, ids,
    periods, lines, amounts, bytes); ids are unique, no amount is negative, a removal
    never yields a document, members never outnumber the seats they hold."""
    history, looked_at = case
    for raw in history:
        note(f"{raw['occurred_at'].isoformat()} {raw['type']} {raw['data']}")
    note(f"looked at on {looked_at}")
    reference = ref.ReferenceSeatBiller()
    expected: list[dict[str, Any]] = []

    def check(
        raw: dict[str, Any], accepted: bool, documents: list[Document], own: list[Document]
    ) -> None:
        ref_accepted, ref_documents = reference.apply(raw)
        assert accepted == ref_accepted, raw
        if raw["type"] in {"seats.removed", "member.added", "member.removed", "member.updated"}:
            assert own == []
        expected.extend(ref_documents)

    issued, state = run_fold(history, looked_at, check)
    expected += reference.roll_to(looked_at)
    assert dumped(issued) == expected
    assert [d.model_dump_json() for d in issued] == [ref.canonical_json(e) for e in expected]
    ids = [d.document_id for d in issued]
    assert len(set(ids)) == len(ids)
    for document in issued:
        assert document.kind.value == "seat_invoice"
        assert_adds_up(document)
        assert all(usd(line.amount) >= 0 for line in document.lines)
        assert document.lines  # an invoice with nothing to pay is not issued
        assert document.period_start < document.period_end
    if state is not None:
        for seat in SeatType:
            assert state.members_holding(seat) <= state.seats_kept(seat)
        assert state.term_start == reference.term_start.isoformat()
    # A replay of the log gives the same invoices, byte for byte (G3).
    replayed, _ = run_fold(history, looked_at)
    assert [d.model_dump_json() for d in replayed] == [d.model_dump_json() for d in issued]


def test_rounding_reference_is_half_away_from_zero() -> None:
    """The reference's own rounding, on the edges the properties lean on."""
    assert ref.round_cents(Fraction(HALF_CENT_NANO, 10**9)) == Decimal("0.01")
    assert ref.round_cents(Fraction(HALF_CENT_NANO - 1, 10**9)) == Decimal("0.00")
    assert ref.round_cents(Fraction(-HALF_CENT_NANO, 10**9)) == Decimal("-0.01")
    assert ref.money(ref.round_cents(Fraction(-1, 10**9))) == "0.00"
    assert ref.months_left(date(2026, 1, 1), date(2026, 4, 15)) == 8 + Fraction(16, 30)
    assert ref.months_left(date(2026, 3, 15), date(2026, 3, 15)) == 12
    assert ref.months_left(date(2028, 2, 20), date(2028, 2, 20)) == 12  # a leap-year term
