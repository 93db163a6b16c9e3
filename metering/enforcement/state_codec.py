"""How an OrgAccount is written to Redis: the JSON of the fold's own state, and the flat
hot-path projections the usage script and the gate read."""

from __future__ import annotations

import json

from pydantic import TypeAdapter

from billing.accounts import Member, OrgAccount
from schemas.account import Role, SeatType

_ACCOUNT = TypeAdapter(OrgAccount)


def encode_account(state: OrgAccount) -> bytes:
    return _ACCOUNT.dump_json(state)


def decode_account(raw: bytes | str | None) -> OrgAccount | None:
    return None if raw is None else _ACCOUNT.validate_json(raw)


def meta_fields(state: OrgAccount) -> dict[str, str]:
    fields = {
        "plan": state.plan.value,
        "billing_mode": state.billing_mode.value,
        "extra_usage": "1" if state.extra_usage else "0",
        "term_start": state.term_start,
        "thresholds": json.dumps([str(t) for t in state.thresholds]),
        "purchases": str(len(state.purchases)),
    }
    if state.org_cap_nano_usd is not None:
        fields["org_cap"] = str(state.org_cap_nano_usd)
    return fields


def member_fields(state: OrgAccount) -> dict[str, str]:
    return {user: encode_member(m) for user, m in state.members.items()}


def cap_fields(state: OrgAccount) -> dict[str, str]:
    return {user: str(cap) for user, cap in state.user_caps_nano_usd.items()}


def encode_member(member: Member) -> str:
    return f"{member.seat.value}|{member.role.value}"


def decode_member(raw: bytes | str | None) -> Member | None:
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    seat, role = text.split("|", 1)
    return Member(SeatType(seat), Role(role))
