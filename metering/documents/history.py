"""What the month-end batch reads back from ClickHouse to bill an org: its accepted
account history, from the ledger in log order, with each event's place in
`account.events.v1` (the watermarks compare with it); and its billed usage of a month,
on time and late, below the watermarks of `usage.priced.v1`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from billing.accounts import OrgAccount, Rejected, next_state
from billing.documents import LateUsage, Purchase, UsageTotal, midnight, month_period
from metering.clickhouse.rows import event_from_row
from metering.clickhouse.store import Store
from schemas.account import (
    ACCOUNT_EVENT_ADAPTER,
    AccountEvent,
    BillingMode,
    ContractRenewed,
    CreditsPurchased,
    OrgCreated,
    Plan,
    SeatType,
)
from schemas.documents import DocumentKind

# The documents that bill usage: the previous one's watermarks tell late usage apart.
USAGE_KINDS = (DocumentKind.USAGE_INVOICE.value, DocumentKind.CREDIT_STATEMENT.value)


@dataclass(frozen=True)
class LoggedEvent:
    event: AccountEvent
    partition: int
    offset: int

    def stored_before(self, watermarks: Sequence[int]) -> bool:
        return self.offset < _at(watermarks, self.partition)


def _at(watermarks: Sequence[int], partition: int) -> int:
    return watermarks[partition] if partition < len(watermarks) else 0


@dataclass
class OrgHistory:
    org_id: str
    created: OrgCreated
    events: list[LoggedEvent] = field(default_factory=list)

    @property
    def billing_mode(self) -> BillingMode:
        return self.created.data.billing_mode  # never changes, not even at migration (R7)

    @property
    def first_month(self) -> str:
        return month_of(self.created.occurred_at)

    def purchases(
        self, month: str, watermarks: Sequence[int], previous: Sequence[int] | None
    ) -> list[Purchase]:
        """Purchases on this month's statement: bought in the month and stored when it is
        issued, plus those of earlier months stored after the previous statement (late)."""
        found = []
        for logged in self.events:
            event = logged.event
            if not isinstance(event, CreditsPurchased) or not logged.stored_before(watermarks):
                continue
            bought_in = month_of(event.occurred_at)
            late = bought_in < month and (previous is None or not logged.stored_before(previous))
            if bought_in == month or late:
                found.append(
                    Purchase(event.data.purchase_id, event.occurred_at, event.data.amount, late)
                )
        return found

    def legacy_seats_at(self, moment: datetime, watermarks: Sequence[int]) -> dict[SeatType, int]:
        """The seats of a seat-based plan held when `moment` began (R6), as stored; empty if
        the org is usage-based by then."""
        state: OrgAccount | None = None
        for logged in self.events:
            if not logged.stored_before(watermarks) or not _in_effect(logged.event, moment):
                continue
            outcome = next_state(state, logged.event)
            if not isinstance(outcome, Rejected):  # out of log order it may not apply
                state = outcome
        if state is None or state.plan is not Plan.SEAT_BASED:
            return {}
        return dict(state.seats)


def _in_effect(event: AccountEvent, moment: datetime) -> bool:
    """Whether `event` had happened when `moment` began. A renewal takes effect when its
    term starts (R7: legacy orgs migrate then), however early or late it was recorded;
    an event at the very first instant of a month belongs to that month."""
    if isinstance(event, ContractRenewed):
        return midnight(event.data.term_start) <= moment
    return event.occurred_at < moment


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def load_histories(store: Store, org_ids: Sequence[str] | None = None) -> dict[str, OrgHistory]:
    select = (
        "SELECT event_id, org_id, type, occurred_at, actor_user_id, actor_role, data, "
        "source_partition, source_offset "
        f"FROM {store.table('account_events')} FINAL WHERE status = 'accepted' {{where}} "
        "ORDER BY source_partition, source_offset"
    )
    if org_ids is None:
        rows = store.rows(select.format(where=""))
    else:  # each org's events keep their log order within its batch
        rows = store.rows_in(select.format(where="AND org_id IN %(orgs)s"), "orgs", org_ids)
    histories: dict[str, OrgHistory] = {}
    for *columns, partition, offset in rows:
        event = ACCOUNT_EVENT_ADAPTER.validate_python(event_from_row(columns))
        history = histories.get(event.org_id)
        if history is None:
            if not isinstance(event, OrgCreated):  # cannot be accepted before it
                continue
            history = histories[event.org_id] = OrgHistory(event.org_id, event)
        history.events.append(LoggedEvent(event, partition, offset))
    return histories


def billed_usage(
    store: Store, month: str, orgs: Sequence[str], usage_marks: Sequence[int]
) -> dict[str, tuple[list[UsageTotal], list[LateUsage]]]:
    """Billed usage per org: this month's per member × model, stored below the
    watermarks, and late usage of earlier months stored after the org's previous
    usage document (from the `documents` table), per month × member × model."""
    start, end = month_period(month)
    rows = store.rows_in(
        f"""
        SELECT e.org_id, formatDateTime(e.occurred_at, '%%Y-%%m') AS month,
               e.user_id, e.model,
               sumIf(toUInt64(e.input_tokens) + e.output_tokens
                     + e.cache_creation_input_tokens + e.cache_read_input_tokens,
                     e.billed_nano_usd > 0) AS tokens,
               sum(e.billed_nano_usd) AS billed
        FROM {store.table("usage_events")} AS e
        LEFT JOIN (
            SELECT org_id, argMax(usage_watermarks, period_start) AS previous
            FROM {store.table("documents")}
            WHERE kind IN %(kinds)s AND period_start < %(start_day)s AND org_id IN %(orgs)s
            GROUP BY org_id
        ) AS p ON e.org_id = p.org_id
        WHERE e.org_id IN %(orgs)s
          AND e.occurred_at < %(end)s
          AND e.priced_offset < arrayElement(%(marks)s, e.priced_partition + 1)
          AND (e.occurred_at >= %(start)s
               OR e.priced_offset >= arrayElement(p.previous, e.priced_partition + 1))
        GROUP BY e.org_id, month, e.user_id, e.model
        HAVING billed != 0
        """,
        "orgs",
        orgs,
        {
            "kinds": list(USAGE_KINDS),
            "start": midnight(start),
            "start_day": start,
            "end": midnight(end),
            "marks": list(usage_marks),
        },
    )
    usage: dict[str, tuple[list[UsageTotal], list[LateUsage]]] = defaultdict(lambda: ([], []))
    for org, used_in, user, model, tokens, billed in rows:
        on_time, late = usage[org]
        if used_in == month:
            on_time.append(UsageTotal(user, model, int(tokens), int(billed)))
        else:
            late.append(LateUsage(used_in, user, model, int(tokens), int(billed)))
    return usage
