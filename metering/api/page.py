"""The "Organization settings › Usage" page (R18): the owner's console, rendered on the
server.

It shows what `GET /v1/orgs/{org}/usage` returns — it calls that endpoint's function, so
the checks (401 → 403 → 404) are the API's own — in dollars and cents (the exact figure
in a tooltip), plus, for owners, the daily chart, spend by model and surface, issued
documents and notification deliveries from ClickHouse when this process may read it,
and the forms that change caps and buy credits (console.py). A member sees their own
row only: not the org's totals, balance, chart or other members.

Who is looking comes from the session a login link opened, or an Authorization header
(viewer.py); never from a token in the URL.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from jinja2 import Environment, PackageLoader, StrictUndefined

from billing.accounts import MONEY_ROLES
from billing.entitlements import seat_includes
from billing.rounding import dollars_and_cents, format_cents
from metering.api.deps import MONTH, OrgId, Services, Svc, bearer, role_of
from metering.api.models import MemberRow, UsageResponse
from metering.api.notification_endpoints import registered_url
from metering.api.routes import usage
from metering.api.viewer import viewer
from metering.clickhouse.deliveries import DeliveryAttempt, recent_deliveries
from metering.clickhouse.queries import (
    Spend,
    daily_spend,
    model_spend,
    month_bounds,
    surface_spend,
)
from metering.clickhouse.store import Store
from metering.documents.store import org_documents
from metering.enforcement.records import month_of
from schemas.account import BillingMode, Plan, SeatType
from schemas.money import format_usd, parse_usd
from schemas.usage import Surface

NO_STORE_NOTE = "Daily chart unavailable: ClickHouse is not readable from this process"
T = TypeVar("T")
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}

log = logging.getLogger("metering.api.page")
page_router = APIRouter(include_in_schema=False)
templates = Environment(
    loader=PackageLoader("metering.api", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def usd(amount: str | None) -> str:
    """A decimal string from the usage view ("1.50", "-3.00") as shown: "$1.50", "-$3.00"."""
    if amount is None:
        return "unlimited"
    return f"-${amount[1:]}" if amount.startswith("-") else f"${amount}"


@dataclass(frozen=True)
class Money:
    """An amount as an admin reads it (dollars and cents, rounded half away from zero for
    display only) and the exact figure, for the tooltip."""

    shown: str
    exact: str

    @staticmethod
    def of(nano_usd: int) -> Money:
        return Money(usd(dollars_and_cents(nano_usd)), usd(format_usd(nano_usd)))

    @staticmethod
    def parse(amount: str | None) -> Money | None:
        """A decimal string of the usage view (a balance may be negative, R11)."""
        if amount is None:
            return None
        if amount.startswith("-"):
            return Money.of(-parse_usd(amount[1:]))
        return Money.of(parse_usd(amount))


def percent(spend_nano_usd: int, limit: str | None) -> float | None:
    """Spend as a share of a limit, 0–100 (a bar's width); None without a limit."""
    if limit is None:
        return None
    cap = parse_usd(limit)
    if cap <= 0:
        return 100.0
    return round(min(100.0, 100.0 * spend_nano_usd / cap), 1)


def level(share: float | None, reached: bool) -> str:
    if reached or (share is not None and share >= 100):
        return "over"
    return "warn" if share is not None and share >= 80 else "ok"


REASONS = {
    "unknown_member": "not a member",
    "surface_not_in_seat": "surface not in seat",
    "credits_exhausted": "credits used up",
    "org_cap_reached": "organization cap reached",
    "user_cap_reached": "member cap reached",
    "seat_allowance_exhausted": "included usage used up",
}


# Short enough for a table cell: a chat seat's are "chat web, desktop, mobile".
SURFACE_NAMES = {
    Surface.CHAT_WEB: "chat web",
    Surface.CHAT_DESKTOP: "desktop",
    Surface.CHAT_MOBILE: "mobile",
    Surface.CLAUDE_CODE: "Claude Code",
    Surface.COWORK: "Cowork",
}


@dataclass(frozen=True)
class MemberLine:
    user_id: str
    role: str
    seat: str
    spend: Money
    cap: Money | None  # None: unlimited
    limit: Money | None
    status: str
    blocked: bool
    share: float | None  # of the effective limit
    level: str
    surfaces: str  # the surfaces the seat includes
    allowance_used: Money | None  # seat-based plans
    allowance: Money | None
    allowance_share: float | None


def member_line(row: MemberRow) -> MemberLine:
    share = percent(parse_usd(row.spend), row.effective_limit)
    if row.status is None:
        status = "—"  # a closed month: status is about now
    elif row.status == "blocked":
        status = f"blocked: {REASONS.get(row.reason or '', row.reason)}"
    else:
        status = "active"
    seat = SeatType(row.seat_type) if row.seat_type else None
    included = [SURFACE_NAMES[s] for s in Surface if seat and seat_includes(seat, s)]
    surfaces = "all" if len(included) == len(Surface) else ", ".join(included) or "—"
    allowance_share = None
    if row.allowance is not None and row.allowance_used is not None:
        allowance_share = percent(parse_usd(row.allowance_used), row.allowance)
    return MemberLine(
        user_id=row.user_id,
        role=(row.role or "not a member").replace("_", " "),
        seat=(row.seat_type or "—").replace("_", " "),
        spend=Money.of(parse_usd(row.spend)),
        cap=Money.parse(row.cap),
        limit=Money.parse(row.effective_limit),
        status=status,
        blocked=row.status == "blocked",
        share=share,
        level=level(share, row.status == "blocked"),
        surfaces=surfaces,
        allowance_used=Money.parse(row.allowance_used),
        allowance=Money.parse(row.allowance),
        allowance_share=allowance_share,
    )


# -- the daily chart (inline SVG, geometry computed here) -----------------------------
WIDTH, HEIGHT = 760, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 26


@dataclass(frozen=True)
class Bar:
    day: str
    amount: str
    events: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    total: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    baseline: int = HEIGHT - BOTTOM


def nice_top(nano_usd: int) -> int:
    """The y axis' top: 1, 2 or 5 × 10^k dollars (cents at least), ≥ the biggest bar."""
    step = 10_000_000  # $0.01
    while True:
        for factor in (1, 2, 5):
            if step * factor >= nano_usd:
                return step * factor
        step *= 10


def chart(days: list[Spend], month: str) -> Chart:
    start, end = month_bounds(month)
    slots = (end - start).days
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / slots
    top = nice_top(max((d.billed_nano_usd for d in days), default=0))
    bars = []
    for spent in days:
        index = (date.fromisoformat(spent.key) - start).days
        height = round(plot_height * max(spent.billed_nano_usd, 0) / top, 1)
        bars.append(
            Bar(
                day=spent.key,
                amount=Money.of(spent.billed_nano_usd).shown,
                events=spent.events,
                x=round(LEFT + slot * index + slot * 0.15, 1),
                y=round(TOP + plot_height - height, 1),
                width=round(slot * 0.7, 1),
                height=height,
            )
        )
    labelled = sorted({1, 5, 10, 15, 20, 25, slots})
    x_ticks = [Tick(round(LEFT + slot * (d - 0.5), 1), str(d)) for d in labelled if d <= slots]
    y_ticks = [
        Tick(round(TOP + plot_height * (1 - part / 2), 1), Money.of(top * part // 2).shown)
        for part in (0, 1, 2)
    ]
    total = Money.of(sum(d.billed_nano_usd for d in days)).shown
    return Chart(bars=bars, x_ticks=x_ticks, y_ticks=y_ticks, total=total)


NO_STORE = "ClickHouse is not readable from this process"


async def from_store(svc: Services, what: str, read: Callable[[Store], T]) -> T | str:
    """`read(store)` in a worker thread, or why it could not run — a note for the page,
    which never fails for ClickHouse (an export turns the note into a 503)."""
    if svc.store is None:
        return f"{what} unavailable: {NO_STORE}"
    try:
        return await asyncio.to_thread(read, svc.store)
    except Exception as exc:
        log.exception("%s", what)
        return f"{what} unavailable: the ClickHouse query failed ({type(exc).__name__})"


async def daily(svc: Services, org_id: str, month: str) -> tuple[Chart | None, str | None]:
    """The chart, or why there is none."""
    days = await from_store(svc, "Daily chart", lambda store: daily_spend(store, org_id, month))
    if isinstance(days, str):
        return None, days
    if not days:
        return None, f"No usage recorded in ClickHouse for {month} yet."
    return chart(days, month), None


async def deliveries(svc: Services, org_id: str) -> tuple[list[DeliveryAttempt], str]:
    """The org's latest notification delivery attempts (owners), or why there are none."""
    found = await from_store(svc, "Deliveries", lambda store: recent_deliveries(store, org_id))
    if isinstance(found, str):
        return [], found
    return found, "No notification has been delivered to this organization yet."


@dataclass(frozen=True)
class Share:
    """One line of a breakdown: a model's or a surface's spend in the month."""

    key: str
    events: int
    spend: Money


async def breakdown(
    svc: Services, org_id: str, month: str
) -> tuple[list[Share], list[Share], str | None]:
    """Spend by model and by surface, or why there is none."""

    def read(store: Store) -> tuple[list[Spend], list[Spend]]:
        return model_spend(store, org_id, month), surface_spend(store, org_id, month)

    found = await from_store(svc, "Breakdown", read)
    if isinstance(found, str):
        return [], [], found

    def shares(rows: list[Spend]) -> list[Share]:
        return [Share(r.key.replace("_", " "), r.events, Money.of(r.billed_nano_usd)) for r in rows]

    models, surfaces = found
    note = None if models else f"No usage recorded in ClickHouse for {month} yet."
    return shares(models), shares(surfaces), note


@dataclass(frozen=True)
class IssuedLine:
    document_id: str
    kind: str
    period: str
    issued_on: str
    total: str


async def issued(svc: Services, org_id: str) -> tuple[list[IssuedLine], str]:
    """The org's issued documents (owners), or why there are none."""
    found = await from_store(svc, "Documents", lambda store: org_documents(store, org_id))
    if isinstance(found, str):
        return [], found
    lines = [
        IssuedLine(
            document_id=d.document_id,
            kind=d.kind.replace("_", " "),
            period=d.period_start.strftime("%Y-%m"),
            issued_on=d.issued_at.strftime("%Y-%m-%d"),
            total=usd(format_cents(d.total_cents)),
        )
        for d in found
    ]
    return lines, "No document has been issued to this organization yet."


def shift(month: str, by: int) -> str:
    year, number = divmod(int(month[:4]) * 12 + int(month[5:]) - 1 + by, 12)
    return f"{year:04d}-{number + 1:02d}"


# -- the route ------------------------------------------------------------------------
# What the template reads that only an owner's page (or no error page) has.
_ABSENT: dict[str, object] = {
    "error": None,
    "chart": None,
    "note": "",
    "deliveries": None,
    "deliveries_note": "",
    "by_model": None,
    "by_surface": None,
    "breakdown_note": None,
    "documents": None,
    "documents_note": "",
    "endpoint": None,
    "message": None,
    "signed_in": False,
}


def html(status: int, headers: dict[str, str] | None = None, **context: object) -> HTMLResponse:
    body = templates.get_template("usage.html").render({**_ABSENT, **context})
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **(headers or {})})


def usage_html(**context: object) -> HTMLResponse:
    return html(200, None, **context)


def error_page(exc: HTTPException) -> HTMLResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return html(exc.status_code, dict(exc.headers or {}), error=exc.status_code, detail=detail)


@page_router.get("/orgs/{org_id}/usage", response_class=HTMLResponse)
async def usage_page(
    *,
    request: Request,
    org_id: OrgId,
    svc: Svc,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    month: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    """Organization settings › Usage, for the session's member or a bearer token's."""
    try:
        seen = await viewer(request, svc, credentials)
        if month is not None and not MONTH.fullmatch(month):
            raise HTTPException(422, "month must be YYYY-MM")
        view: UsageResponse = await usage(org_id, svc, seen.caller, month)
    except HTTPException as exc:
        return error_page(exc)
    role = await role_of(svc, org_id, seen.user_id)
    everyone = role in MONEY_ROLES
    current = month_of(svc.clock())
    share = percent(parse_usd(view.spend), view.cap)
    context: dict[str, object] = {}
    if everyone:
        chart_, note = await daily(svc, org_id, view.month)
        attempts, attempts_note = await deliveries(svc, org_id)
        by_model, by_surface, breakdown_note = await breakdown(svc, org_id, view.month)
        documents, documents_note = await issued(svc, org_id)
        endpoint = await registered_url(svc, org_id)
        context = {
            "chart": chart_,
            "note": note,
            "deliveries": attempts,
            "deliveries_note": attempts_note,
            "by_model": by_model,
            "by_surface": by_surface,
            "breakdown_note": breakdown_note,
            "documents": documents,
            "documents_note": documents_note,
            "endpoint": endpoint,
        }
    session = seen.session
    message = await svc.sessions.said(session) if session else None
    return usage_html(
        view=view,
        who=seen.user_id,
        role=(role.value if role else "").replace("_", " "),
        everyone=everyone,
        members=[member_line(m) for m in view.members],
        seat_based=view.plan == Plan.SEAT_BASED.value,
        balance=Money.parse(view.credit_balance),
        negative=(view.credit_balance or "").startswith("-"),
        spend=Money.parse(view.spend),
        cap=Money.parse(view.cap),
        share=share,
        level=level(share, view.status == "cap_reached"),
        previous=shift(view.month, -1),
        following=shift(view.month, 1) if view.month < current else None,
        current=view.month == current,
        # Forms: owners, in a browser session (the CSRF token is the session's), for
        # the current month (a cap is about the month that is running).
        forms=everyone and session is not None and view.month == current,
        csrf=session.csrf if session else "",
        request_id=secrets.token_urlsafe(16),
        self_serve=view.billing_mode == BillingMode.SELF_SERVE.value,
        sales_contact=svc.settings.console_sales_contact,
        message=message,
        signed_in=session is not None,
        **context,
    )
