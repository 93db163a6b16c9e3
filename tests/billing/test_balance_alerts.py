"""Self-serve balance alerts (R17, second half)."""

from __future__ import annotations

from billing.notifications import due_balance_levels

USD = 1_000_000_000
LEVELS = (10 * USD, 1 * USD)


def test_each_level_once_per_purchase_cycle() -> None:
    """A balance of 0.50 is below 10.00 and 1.00: both due; once recorded, neither is due
    again in that cycle; after another purchase (cycle 2) falling below alerts again."""
    due = due_balance_levels("org", USD // 2, 1, LEVELS, set())
    assert [d.notification.threshold for d in due] == ["10.00", "1.00"]
    assert [d.mark for d in due] == [f"balance|{10 * USD}|1", f"balance|{USD}|1"]
    recorded = {d.mark for d in due}
    assert due_balance_levels("org", USD // 2, 1, LEVELS, recorded) == []
    again = due_balance_levels("org", USD // 2, 2, LEVELS, recorded)
    assert [d.notification.notification_id for d in again] == [
        f"org:balance_low:{10 * USD}:2",
        f"org:balance_low:{USD}:2",
    ]


def test_falling_below_is_strict() -> None:
    """Exactly at a level is not below it; one nano under is."""
    assert due_balance_levels("org", 10 * USD, 1, LEVELS, set()) == []
    [due] = due_balance_levels("org", 10 * USD - 1, 1, LEVELS, set())
    assert due.notification.balance == 10 * USD - 1
