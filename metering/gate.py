"""The gate: may this member make a request on this surface now? (R15)

Product services call it before every model request, so it reads Redis only, in one
round trip — one EVALSHA of `enforcement/lua/gate_read.lua`, which reads the org's meta,
the member, their cap, the balance and the month's spend together — and decides with
the pure rules of `billing.enforcement`, from the `OrgState` that reply is (the usage
view and the members board decide from the same type, read whole). The month is the
clock's current UTC month: a new month starts with zero spend, which lifts cap blocks
the moment it begins (R16).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from redis.asyncio import Redis

from billing.accounts import Member
from billing.enforcement import Decision, GateState, decide
from billing.pricing import PriceBook
from metering.enforcement.keys import OrgKeys
from metering.enforcement.org_state import OrgState, member_entry
from metering.enforcement.records import month_of
from schemas.usage import Surface

READ_SCRIPT = (resources.files("metering.enforcement") / "lua" / "gate_read.lua").read_text()


class UnknownOrgError(LookupError):
    """No org.created has been applied for this org."""


def _int(raw: bytes) -> int:
    return int(raw) if raw else 0


@dataclass(frozen=True, slots=True)
class GateReading:
    """What the gate read for one member: their org's state, or None when the org is
    unknown, and — when asked for — another member's entry (None: not a member)."""

    org_id: str
    state: GateState | None
    asker: Member | None = None

    def decide(self, surface: Surface) -> Decision:
        if self.state is None:
            raise UnknownOrgError(self.org_id)
        return decide(self.state, surface)


# Runs READ_SCRIPT: (keys, args) → its reply.
ScriptRunner = Callable[[Sequence[str], Sequence[str]], Awaitable[bytes]]


class Gate:
    def __init__(
        self,
        client: Redis,
        book: PriceBook,
        clock: Callable[[], datetime],
        prefix: str = "",
        *,
        run_script: ScriptRunner | None = None,
    ) -> None:
        """`run_script`: how READ_SCRIPT reaches Redis, when not through `client` (the
        API's own pipelined connection, `metering.api.gate_script`)."""
        self._book = book
        self._clock = clock
        self._prefix = prefix
        # By SHA (EVALSHA); redis-py loads it once when Redis does not know it (NOSCRIPT).
        self._script = client.register_script(READ_SCRIPT)
        self._run = run_script or self._run_by_client

    async def _run_by_client(self, keys: Sequence[str], args: Sequence[str]) -> bytes:
        reply: bytes = await self._script(keys=keys, args=args)
        return reply

    async def check(self, org_id: str, user_id: str, surface: Surface | str) -> Decision:
        """Raises UnknownOrgError, and ValueError for a surface that does not exist."""
        surface = Surface(surface)
        return (await self.read(org_id, user_id)).decide(surface)

    async def read(self, org_id: str, user_id: str, *, asker: str | None = None) -> GateReading:
        """The gate's state for `user_id`, and `asker`'s member entry when given, in one
        round trip (the HTTP gate asks for the caller's when a member asks about someone
        else, whose role then decides whether they may)."""
        now = self._clock()
        month = month_of(now)
        keys = OrgKeys(self._prefix, org_id)
        reply = await self._run(
            [keys.meta, keys.members, keys.caps, keys.balance, keys.spend(month)],
            [user_id, asker or ""],  # ids are never empty: "" is no one
        )
        # One string of eleven fields, empty for absent (gate_read.lua says why)
        fields = reply.split(b"\n")
        plan, billing_mode, extra_usage, org_cap, member_raw, cap, balance = fields[:7]
        org_spend, user_spend, allowance_used, asker_raw = fields[7:]
        # The org's state as far as this member goes: the script read only their entries.
        member = member_entry(member_raw)
        state = OrgState.from_meta(
            org_id,
            month,
            {
                "plan": plan,
                "billing_mode": billing_mode,
                "extra_usage": extra_usage,
                "org_cap": org_cap,
            },
            members={user_id: member} if member else {},
            caps_nano_usd={user_id: int(cap)} if cap else {},
            balance_nano_usd=_int(balance),
            org_spend_nano_usd=_int(org_spend),
            user_spend_nano_usd={user_id: _int(user_spend)},
            allowance_used_nano_usd={user_id: _int(allowance_used)},
        )
        if state is None:
            return GateReading(org_id, None)
        return GateReading(
            org_id, state.gate_state(user_id, self._book, now.date()), member_entry(asker_raw)
        )
