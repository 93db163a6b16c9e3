"""The "Organization settings › Usage" page (R18), rendered on the server.

It shows what `GET /v1/orgs/{org}/usage` returns — it calls that endpoint's function, so
the checks (401 → 403 → 404) and the view (members see only their own row) are the
API's own — plus a daily spend chart from ClickHouse when this process may read it.

A browser cannot put an Authorization header on a link, so besides the header the page
takes the token as `?token=…` (then kept in an HttpOnly, SameSite=Strict cookie scoped
to `/orgs`, so later visits need no token in the URL) or from that cookie. Only this
read-only page reads the cookie: the JSON API (and every write) wants the header.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Cookie, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from jinja2 import Environment, PackageLoader, StrictUndefined

from billing.accounts import MONEY_ROLES
from metering.api.deps import MONTH, OrgId, Svc, bearer, caller, role_of
from metering.api.models import MemberRow, UsageResponse
from metering.api.routes import usage
from metering.clickhouse.deliveries import DeliveryAttempt, recent_deliveries
from metering.clickhouse.queries import Spend, daily_spend, month_bounds
from metering.enforcement.records import month_of
from schemas.money import format_usd, parse_usd

COOKIE = "metering_token"
NO_STORE_NOTE = "Daily chart unavailable: ClickHouse is not readable from this process"
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
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


@dataclass(frozen=True)
class MemberLine:
    user_id: str
    role: str
    seat: str
    spend: str
    cap: str
    limit: str
    status: str
    blocked: bool
    share: float | None  # of the effective limit
    level: str


def member_line(row: MemberRow) -> MemberLine:
    share = percent(parse_usd(row.spend), row.effective_limit)
    if row.status is None:
        status = "—"  # a closed month: status is about now
    elif row.status == "blocked":
        status = f"blocked: {row.reason}"
    else:
        status = "active"
    return MemberLine(
        user_id=row.user_id,
        role=(row.role or "not a member").replace("_", " "),
        seat=(row.seat_type or "—").replace("_", " "),
        spend=usd(row.spend),
        cap=usd(row.cap),
        limit=usd(row.effective_limit),
        status=status,
        blocked=row.status == "blocked",
        share=share,
        level=level(share, row.status == "blocked"),
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
                amount=usd(format_usd(spent.billed_nano_usd)),
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
        Tick(round(TOP + plot_height * (1 - part / 2), 1), usd(format_usd(top * part // 2)))
        for part in (0, 1, 2)
    ]
    total = usd(format_usd(sum(d.billed_nano_usd for d in days)))
    return Chart(bars=bars, x_ticks=x_ticks, y_ticks=y_ticks, total=total)


async def daily(svc: Svc, org_id: str, month: str) -> tuple[Chart | None, str | None]:
    """The chart, or why there is none: the page never fails for ClickHouse."""
    if svc.store is None:
        return None, NO_STORE_NOTE
    try:
        days = await asyncio.to_thread(daily_spend, svc.store, org_id, month)
    except Exception as exc:
        log.exception("daily spend of %s for %s", org_id, month)
        return None, f"Daily chart unavailable: the ClickHouse query failed ({type(exc).__name__})"
    if not days:
        return None, f"No usage recorded in ClickHouse for {month} yet."
    return chart(days, month), None


async def deliveries(svc: Svc, org_id: str) -> tuple[list[DeliveryAttempt], str]:
    """The org's latest notification delivery attempts (owners), or why there are none."""
    if svc.store is None:
        return [], "Deliveries unavailable: ClickHouse is not readable from this process"
    try:
        found = await asyncio.to_thread(recent_deliveries, svc.store, org_id)
    except Exception as exc:
        log.exception("deliveries of %s", org_id)
        return [], f"Deliveries unavailable: the ClickHouse query failed ({type(exc).__name__})"
    return found, "No notification has been delivered to this organization yet."


def shift(month: str, by: int) -> str:
    year, number = divmod(int(month[:4]) * 12 + int(month[5:]) - 1 + by, 12)
    return f"{year:04d}-{number + 1:02d}"


# -- the route ------------------------------------------------------------------------
def html(status: int, headers: dict[str, str] | None = None, **context: object) -> HTMLResponse:
    body = templates.get_template("usage.html").render({"error": None, **context})
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **(headers or {})})


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
    token: Annotated[str | None, Query()] = None,
    month: Annotated[str | None, Query()] = None,
    cookie: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> HTMLResponse:
    """Organization settings › Usage. The token: `?token=` (then kept in a cookie), else
    the Authorization header, else the cookie — the first one given is the one checked."""
    header = credentials.credentials if credentials else None
    source, given = next(
        ((s, v) for s, v in (("query", token), ("header", header)) if v), ("cookie", cookie)
    )
    try:
        who = caller(
            request,
            HTTPAuthorizationCredentials(scheme="Bearer", credentials=given) if given else None,
        )
        if month is not None and not MONTH.fullmatch(month):
            raise HTTPException(422, "month must be YYYY-MM")
        view: UsageResponse = await usage(org_id, svc, who, month)
    except HTTPException as exc:
        response = error_page(exc)
        if exc.status_code == 401 and source == "cookie" and cookie is not None:
            response.delete_cookie(COOKIE, path="/orgs")  # stale: stop sending it
        return response
    assert who.user_id is not None  # usage() refuses service tokens
    role = await role_of(svc, org_id, who.user_id)
    current = month_of(svc.clock())
    chart_, note = await daily(svc, org_id, view.month)
    share = percent(parse_usd(view.spend), view.cap)
    attempts, attempts_note = await deliveries(svc, org_id) if role in MONEY_ROLES else (None, "")
    response = html(
        200,
        view=view,
        who=who.user_id,
        role=(role.value if role else "").replace("_", " "),
        everyone=role in MONEY_ROLES,
        members=[member_line(m) for m in view.members],
        balance=None if view.credit_balance is None else usd(view.credit_balance),
        negative=(view.credit_balance or "").startswith("-"),
        spend=usd(view.spend),
        cap=None if view.cap is None else usd(view.cap),
        share=share,
        level=level(share, view.status == "cap_reached"),
        chart=chart_,
        note=note,
        previous=shift(view.month, -1),
        following=shift(view.month, 1) if view.month < current else None,
        current=view.month == current,
        deliveries=attempts,
        deliveries_note=attempts_note,
    )
    if source == "query" and given:
        response.set_cookie(
            COOKIE,
            given,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/orgs",
        )
    return response
