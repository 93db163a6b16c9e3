"""Which notifications a spend snapshot calls for (R16, R17), as pure functions.

State-based, not edge-based: a notification is due when its condition holds and its mark
is not recorded yet. The processor publishes what is due, then records the marks, so a
crash in between re-publishes (with the same deterministic id) and never loses one, and a
replay or a duplicate never emits a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from billing.enforcement import BlockReason, cap_reached
from billing.thresholds import reached_thresholds
from schemas.account import BillingMode, Plan
from schemas.money import format_usd
from schemas.outputs import Notification, NotificationKind

CREDITS_PERIOD = "-"  # the credit balance is not monthly


@dataclass(frozen=True)
class UserSpend:
    spend_nano_usd: int  # billed this month
    cap_nano_usd: int | None
    allowance_used_nano_usd: int = 0
    allowance_nano_usd: int = 0


@dataclass(frozen=True)
class SpendSnapshot:
    """One org's numbers for one month, for the subjects being evaluated."""

    org_id: str
    month: str
    plan: Plan
    billing_mode: BillingMode
    extra_usage: bool
    thresholds: tuple[Decimal, ...]
    org_spend_nano_usd: int
    org_cap_nano_usd: int | None
    balance_nano_usd: int
    purchases: int  # how many credit purchases so far: tells stop/resume cycles apart
    users: dict[str, UserSpend] = field(default_factory=dict)


@dataclass(frozen=True)
class Due:
    mark: str  # what the processor records once the notification is published
    notification: Notification


def _subject(user_id: str | None) -> str:
    return "org" if user_id is None else f"u:{user_id}"


# A stop's mark is "<period>|<reason>|<subject>|<cycle>" (period: a month, or
# CREDITS_PERIOD); its scope is the mark without the cycle. Made and read only here.


def _stop_scope(period: str, reason: BlockReason, user_id: str | None) -> str:
    return f"{period}|{reason.value}|{_subject(user_id)}"


def _scope_of(mark: str) -> str:
    return mark.rsplit("|", 1)[0]


def _period_of(mark: str) -> str:
    return mark.split("|", 1)[0]


def due_thresholds(snapshot: SpendSnapshot, notified: set[str]) -> list[Due]:
    """Threshold notifications reached and not yet recorded in `notified` (R17)."""
    subjects: list[tuple[str | None, int, int | None]] = [
        (None, snapshot.org_spend_nano_usd, snapshot.org_cap_nano_usd)
    ]
    subjects += [(u, s.spend_nano_usd, s.cap_nano_usd) for u, s in sorted(snapshot.users.items())]
    due = []
    for user_id, spend, cap in subjects:
        for fraction in reached_thresholds(spend, cap, snapshot.thresholds):
            mark = f"{_subject(user_id)}|{fraction}"
            if mark in notified:
                continue
            due.append(
                Due(
                    mark,
                    Notification(
                        notification_id=f"{snapshot.org_id}:{snapshot.month}:threshold:{mark}",
                        kind=NotificationKind.THRESHOLD_REACHED,
                        org_id=snapshot.org_id,
                        user_id=user_id,
                        month=snapshot.month,
                        threshold=str(fraction),
                        spend=spend,
                        cap=cap,
                    ),
                )
            )
    return due


@dataclass(frozen=True)
class StopCondition:
    month: str
    reason: BlockReason
    user_id: str | None
    cycle: str  # the cap value / purchase count the stop belongs to
    spend_nano_usd: int | None = None
    cap_nano_usd: int | None = None

    @property
    def mark(self) -> str:
        return f"{self.scope}|{self.cycle}"

    @property
    def scope(self) -> str:
        """The mark without its cycle: one live stop per scope at a time."""
        return _stop_scope(self.month, self.reason, self.user_id)


def stop_conditions(snapshot: SpendSnapshot) -> list[StopCondition]:
    """The block conditions that hold for the evaluated subjects (R11, R15, R6)."""
    conditions = []
    if cap_reached(snapshot.org_spend_nano_usd, snapshot.org_cap_nano_usd):
        conditions.append(
            StopCondition(
                snapshot.month,
                BlockReason.ORG_CAP_REACHED,
                None,
                str(snapshot.org_cap_nano_usd),
                snapshot.org_spend_nano_usd,
                snapshot.org_cap_nano_usd,
            )
        )
    if snapshot.billing_mode is BillingMode.SELF_SERVE and snapshot.balance_nano_usd <= 0:
        conditions.append(
            StopCondition(
                CREDITS_PERIOD, BlockReason.CREDITS_EXHAUSTED, None, str(snapshot.purchases)
            )
        )
    for user_id, spend in sorted(snapshot.users.items()):
        if cap_reached(spend.spend_nano_usd, spend.cap_nano_usd):
            conditions.append(
                StopCondition(
                    snapshot.month,
                    BlockReason.USER_CAP_REACHED,
                    user_id,
                    str(spend.cap_nano_usd),
                    spend.spend_nano_usd,
                    spend.cap_nano_usd,
                )
            )
        if (
            snapshot.plan is Plan.SEAT_BASED
            and not snapshot.extra_usage
            and spend.allowance_nano_usd > 0
            and spend.allowance_used_nano_usd >= spend.allowance_nano_usd
        ):
            conditions.append(
                StopCondition(
                    snapshot.month, BlockReason.SEAT_ALLOWANCE_EXHAUSTED, user_id, "allowance"
                )
            )
    return conditions


def _stop_notification(org_id: str, kind: NotificationKind, mark: str) -> Notification:
    month, reason, subject, _cycle = mark.split("|", 3)
    return Notification(
        notification_id=f"{org_id}:{kind.value}:{mark}",
        kind=kind,
        org_id=org_id,
        user_id=None if subject == "org" else subject.removeprefix("u:"),
        month=None if month == CREDITS_PERIOD else month,
        reason=reason,
    )


def resumes_for_past_months(org_id: str, recorded: set[str], month: str) -> list[Due]:
    """Monthly stops (caps, allowances) recorded for months before `month` are over: a new
    billing period lifted them (R16). Credit stops are not monthly and stay."""
    return [
        Due(mark, _stop_notification(org_id, NotificationKind.RESUMED, mark))
        for mark in sorted(recorded)
        if _period_of(mark) != CREDITS_PERIOD and _period_of(mark) < month
    ]


def due_stops_and_resumes(
    snapshot: SpendSnapshot,
    recorded: set[str],
    evaluated_scopes: set[str] | None = None,
    *,
    usage_driven: bool = True,
) -> tuple[list[Due], list[Due]]:
    """(stopped, resumed): conditions that hold and are not recorded; recorded stops in
    the evaluated scopes whose condition no longer holds. `evaluated_scopes` None means
    every recorded stop of this snapshot's month and the credit balance is in scope.

    An empty balance is a *stop* only when usage drew it down (`usage_driven`): a new
    self-serve org that has not bought credits yet was never running, so it is not
    "stopped"; its first purchase is not a "resume" either."""
    holding = {c.mark: c for c in stop_conditions(snapshot)}
    stopped = [
        Due(mark, _stop_notification(snapshot.org_id, NotificationKind.STOPPED, mark))
        for mark, condition in sorted(holding.items())
        if mark not in recorded
        and (usage_driven or condition.reason is not BlockReason.CREDITS_EXHAUSTED)
    ]

    def in_scope(mark: str) -> bool:
        if evaluated_scopes is not None:
            return _scope_of(mark) in evaluated_scopes
        return _period_of(mark) in {snapshot.month, CREDITS_PERIOD}

    resumed = [
        Due(mark, _stop_notification(snapshot.org_id, NotificationKind.RESUMED, mark))
        for mark in sorted(recorded)
        if in_scope(mark) and mark not in holding
    ]
    return stopped, resumed


def evaluated_scopes(snapshot: SpendSnapshot) -> set[str]:
    """The stop scopes a usage snapshot speaks for: the org's, and its touched users'."""
    scopes = {
        _stop_scope(snapshot.month, BlockReason.ORG_CAP_REACHED, None),
        _stop_scope(CREDITS_PERIOD, BlockReason.CREDITS_EXHAUSTED, None),
    }
    for user_id in snapshot.users:
        for reason in (BlockReason.USER_CAP_REACHED, BlockReason.SEAT_ALLOWANCE_EXHAUSTED):
            scopes.add(_stop_scope(snapshot.month, reason, user_id))
    return scopes


def due_balance_levels(
    org_id: str,
    balance_nano_usd: int,
    purchases: int,
    levels_nano_usd: tuple[int, ...],
    notified: set[str],
) -> list[Due]:
    """Self-serve balance alerts (R17): one per level the balance has fallen below, per
    purchase cycle (a purchase starts a new cycle: falling again notifies again)."""
    due = []
    for level in sorted(levels_nano_usd, reverse=True):
        mark = f"balance|{level}|{purchases}"
        if balance_nano_usd < level and mark not in notified:
            due.append(
                Due(
                    mark,
                    Notification(
                        notification_id=f"{org_id}:balance_low:{level}:{purchases}",
                        kind=NotificationKind.BALANCE_LOW,
                        org_id=org_id,
                        user_id=None,
                        month=None,
                        threshold=format_usd(level),
                        balance=balance_nano_usd,
                    ),
                )
            )
    return due
