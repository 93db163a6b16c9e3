"""What each seat type may use (R2, R10)."""

from __future__ import annotations

from schemas.account import SeatType
from schemas.usage import Surface

_CHAT = frozenset({Surface.CHAT_WEB, Surface.CHAT_DESKTOP, Surface.CHAT_MOBILE})

SURFACES_BY_SEAT: dict[SeatType, frozenset[Surface]] = {
    SeatType.ENTERPRISE: frozenset(Surface),  # chat, claude_code and cowork
    SeatType.CHAT: _CHAT,
    SeatType.CHAT_CLAUDE_CODE: _CHAT | {Surface.CLAUDE_CODE},
    # Legacy seat-based seats: the SPEC names no surfaces; standard is a chat seat and
    # premium adds Claude Code, as those plans were sold (docs/decisions.md).
    SeatType.STANDARD: _CHAT,
    SeatType.PREMIUM: _CHAT | {Surface.CLAUDE_CODE},
}


def seat_includes(seat: SeatType, surface: Surface) -> bool:
    return surface in SURFACES_BY_SEAT[seat]
