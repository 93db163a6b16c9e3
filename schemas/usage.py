"""The usage event: one per model call, produced by product services (SPEC §4)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Protocol

from schemas.common import Contract, Id, TokenCount, UtcDatetime

USAGE_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class Surface(StrEnum):
    """Where the call came from. Every surface counts towards the pooled usage (R9)."""

    CHAT_WEB = "chat_web"
    CHAT_DESKTOP = "chat_desktop"
    CHAT_MOBILE = "chat_mobile"
    CLAUDE_CODE = "claude_code"
    COWORK = "cowork"


class UsageEvent(Contract):
    event_id: Id
    org_id: Id
    user_id: Id
    surface: Surface
    # Not an enum: a model the price book does not know yet is a billing question
    # (`unknown_model`, re-drivable once priced), not a malformed event.
    model: Id
    input_tokens: TokenCount
    output_tokens: TokenCount
    cache_creation_input_tokens: TokenCount = 0
    cache_read_input_tokens: TokenCount = 0
    occurred_at: UtcDatetime


class UsageFacts(Protocol):
    """What pricing and enforcement read of a usage event: a `UsageEvent`, or the usage
    hot path's `schemas.usage_fast.FastUsage` (the same fields, decoded by msgspec)."""

    @property
    def event_id(self) -> str: ...
    @property
    def org_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def surface(self) -> Surface: ...
    @property
    def model(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_creation_input_tokens(self) -> int: ...
    @property
    def cache_read_input_tokens(self) -> int: ...
    @property
    def occurred_at(self) -> datetime: ...
