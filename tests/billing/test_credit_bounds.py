"""Credits an org may ever buy are bounded (issue 20): the balance must stay far inside
64 bits in every store, so the fold refuses a purchase that would take the total past
MAX_TOTAL_NANO_USD ($1,000,000,000) — with its own reason, changing nothing."""

from __future__ import annotations

from billing.accounts import AccountRejection, OrgAccount, Rejected, apply_account_event
from schemas.money import MAX_TOTAL_NANO_USD
from tests.billing.test_account_fold import BOOK, event, fold, org


def buy(purchase_id: str, amount: str) -> object:
    return event("credits.purchased", {"purchase_id": purchase_id, "amount": amount})


def test_credits_up_to_the_total_bound_are_accepted_and_no_more() -> None:
    state = fold(*org(), buy("p1", "600000000.00"), buy("p2", "400000000.00"))
    assert isinstance(state, OrgAccount)
    assert sum(state.purchases.values()) == MAX_TOTAL_NANO_USD

    refused = apply_account_event(state, buy("p3", "0.000000001"), BOOK)  # type: ignore[arg-type]
    assert isinstance(refused, Rejected)
    assert refused.reason is AccountRejection.BALANCE_LIMIT_EXCEEDED
    assert refused.reason.value == "balance_limit_exceeded"
    assert "1000000000.00" in refused.detail


def test_the_bound_counts_every_purchase_not_the_balance() -> None:
    """Usage drawing the balance down does not make room: the bound is on what was
    bought (a pure function of the account log, so the processor, the API's pre-check
    and the ClickHouse ledger all decide the same)."""
    refused = fold(*org(), buy("p1", "1000000000.00"), buy("p2", "1.00"))
    assert isinstance(refused, Rejected)
    assert refused.reason is AccountRejection.BALANCE_LIMIT_EXCEEDED
