"""Redis key layout. Every key of an org shares the `{org_id}` hash tag, so one Lua
script can touch all of them and Redis Cluster keeps them on one node (G6)."""

from __future__ import annotations

from dataclasses import dataclass

# The sets of notification marks (R17) live under these suffixes of an org's key base:
# the notifications topic and the marks topic name them the same way.
STOPPED = "stopped"


def notified_suffix(period: str) -> str:
    """The set of notification marks of one period (a month, or "-" for the balance)."""
    return f"notified:{period}"


@dataclass(frozen=True)
class OrgKeys:
    prefix: str  # "" in production; a unique prefix per test
    org_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}{{{self.org_id}}}"

    @property
    def script_keys(self) -> list[str]:
        """The keys every Lua script of the org declares: its key base (which is never a
        key itself; the script derives the org's key names from it) and its meta hash.

        Why two, one of them never present: while Redis Cluster migrates the org's hash
        slot, some of its keys are on the old node and some on the new one. A script
        declaring one missing key would be redirected (`ASK`) to the new node and run
        there against half of the org's state (a mark not moved yet looks absent: the
        event would count twice). With two declared keys, one always missing, both nodes
        answer `TRYAGAIN` until the slot has moved, and the caller retries. Outside a
        migration this changes nothing."""
        return [self.base, self.meta]

    @property
    def account(self) -> str:
        """JSON of the folded OrgAccount (the account processor's own state)."""
        return f"{self.base}:account"

    @property
    def meta(self) -> str:
        """Hash: plan, billing_mode, extra_usage, org_cap, thresholds (hot-path copy)."""
        return f"{self.base}:meta"

    @property
    def members(self) -> str:
        """Hash: user_id → "seat|role"."""
        return f"{self.base}:members"

    @property
    def caps(self) -> str:
        """Hash: user_id → cap in nano-USD (absent: unlimited)."""
        return f"{self.base}:caps"

    @property
    def balance(self) -> str:
        """Integer: prepaid credit balance in nano-USD (self-serve; may go negative)."""
        return f"{self.base}:balance"

    @property
    def offsets(self) -> str:
        """Hash: "account:<partition>" → last applied offset of this org's account events."""
        return f"{self.base}:offsets"

    @property
    def account_ids(self) -> str:
        """Hash: account event_id → "digest|partition|offset|outcome"."""
        return f"{self.base}:account_ids"

    @property
    def seat_invoices(self) -> str:
        """Hash: account event_id → JSON list of the `billing.documents.v1` values of the
        seat invoices it issued (re-published as they were when its batch is replayed)."""
        return f"{self.base}:seat_invoices"

    @property
    def account_outcomes(self) -> str:
        """Hash: account event_id → the `account.outcomes.v1` value published for it
        (re-published as it was when its batch is replayed, like the seat invoices)."""
        return f"{self.base}:account_outcomes"

    def idempotent_request(self, event_id: str) -> str:
        """String: JSON of the account event an API write with an Idempotency-Key sent
        first (kept without expiry, like the account event ids; a cache, not state:
        `metering rebuild` skips it). `event_id` here is the key's own id (org, caller,
        key); the event's id also covers the change (metering.api.commands.append)."""
        return f"{self.base}:idempotency:{event_id}"

    @property
    def stopped(self) -> str:
        """Set of "month|reason|subject|cycle" stop conditions notified, not yet resumed."""
        return self.marks(STOPPED)

    def marks(self, suffix: str) -> str:
        """A set of notification marks: `STOPPED` or `notified_suffix(period)`."""
        return f"{self.base}:{suffix}"

    def delivery(self, delivery_id: str) -> str:
        """Integer: the highest step of a notification delivery chain whose successor
        record is durable (the notifier skips steps up to it)."""
        return f"{self.base}:delivery:{delivery_id}"

    def spend(self, month: str) -> str:
        """Hash for one UTC month: org → billed; u:<user> → billed; a:<user> → allowance
        used; t:<user> → total cost (billed + included)."""
        return f"{self.base}:spend:{month}"

    def usage_ids(self, month: str) -> str:
        """Hash of the usage events of one month of `occurred_at`: a digest of the
        event_id → "digest|partition|offset|included_nano_usd" (the de-duplication mark,
        `metering/enforcement/usage_marks.py`). Dropped once no event of that month can be
        accepted any more; the usage script looks an id up in every month it could be
        in, so a re-sent event with another `occurred_at` is still a conflict (G1)."""
        return f"{self.base}:ids:{month}"

    def notified(self, month: str) -> str:
        """Set of "subject|threshold" notified this month (R17)."""
        return self.marks(notified_suffix(month))


def orgs_with_stops_key(prefix: str) -> str:
    """Set of org ids that ever had a stop recorded: the new-month job looks only at
    these. Not org-scoped (it lists orgs), so it lives outside any org's hash slot."""
    return f"{prefix}metering:orgs_with_stops"


def term_ends_key(prefix: str) -> str:
    """Sorted set: org id scored by the day (proleptic ordinal) its current term ends —
    the renewal timer's index of contracts due to renew. Not org-scoped, like the one
    above; a hint only: the timer checks each org's own state before renewing it."""
    return f"{prefix}metering:term_ends"
