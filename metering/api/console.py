"""The console's sign-in and its owner forms.

`GET /login/{link}` opens a session from a one-time login link (session.py); `POST
/logout` ends it. The forms of the Usage page POST here — the org's cap, a member's cap,
a credit purchase, the webhook endpoint — each with the session's CSRF token and a
per-render request id, all through `_change` (the shared checks, then the change). A
change is the very account event the API's routes append (`commands.append` or the
endpoint routes' functions, with the request id as its Idempotency-Key, so a form sent
twice changes once); the answer is a redirect back to the page (POST-redirect-GET)
carrying a message in the session.

Only a session may post: a form is what a browser sends, and the session is what its
CSRF token is bound to. The role is read from the member list on every request.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError

from metering.api.commands import append
from metering.api.deps import OrgId, Services, Svc, UserId, owner, role_of
from metering.api.models import CapChange, CreditPurchase
from metering.api.notification_endpoints import (
    EndpointChange,
    get_endpoint,
    remove_endpoint,
    set_endpoint,
)
from metering.api.page import HEADERS, error_page, templates
from metering.api.session import (
    COOKIE,
    LoginRefused,
    Session,
    check_csrf,
    read_link,
    set_session_cookie,
)
from schemas.account import Role
from schemas.money import format_usd

router = APIRouter(include_in_schema=False)
# Every field optional and unchecked by FastAPI: a form without its CSRF token is 403
# whatever else it holds (a 422 first would tell a forger about the fields).
FormField = Annotated[str | None, Form()]
# A request id: the form's Idempotency-Key and, for a purchase, its purchase id.
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
TAKES_EFFECT = "takes effect within a second"


def _page(org_id: str) -> str:
    return f"/orgs/{org_id}/usage"


def _back(org_id: str) -> RedirectResponse:
    return RedirectResponse(_page(org_id), status_code=303, headers=HEADERS)


def _signed_in_page(target: str) -> HTMLResponse:
    """A page that moves on to the console by itself. Not a redirect: a link opened from
    an email is a cross-site navigation, and a browser does not send a SameSite=Strict
    cookie along a redirect chain that began cross-site; a navigation this page starts
    is same-site, so the console opens signed in."""
    body = templates.get_template("signed_in.html").render(target=target)
    return HTMLResponse(body, headers={**HEADERS, "Refresh": f"0; url={target}"})


@router.get("/login/{link}", response_class=HTMLResponse)
async def login(request: Request, link: str, svc: Svc) -> Response:
    try:
        if len(link) > 2048:
            raise LoginRefused(401, "this sign-in link is not valid")
        claims = read_link(svc.secret, link, now=svc.clock())
        try:
            role = await role_of(svc, claims.org_id, claims.user_id)
        except HTTPException:
            role = None
        if role is None:
            raise LoginRefused(403, "this sign-in link is for someone who is not a member")
        session_id = await svc.sessions.redeem(claims)
    except LoginRefused as refused:
        return error_page(HTTPException(refused.status, str(refused)))
    response = _signed_in_page(_page(claims.org_id))
    max_age = int(svc.sessions.lifetime.total_seconds())
    set_session_cookie(response, request, session_id, max_age)
    return response


async def _session(request: Request, svc: Services, csrf: str | None) -> Session:
    session = await svc.sessions.find(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(401, "not signed in, or the session ended: sign in again")
    check_csrf(session, csrf)
    return session


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request, svc: Svc, csrf: FormField = None) -> Response:
    try:
        session = await _session(request, svc, csrf)
    except HTTPException as exc:
        return error_page(exc)
    await svc.sessions.end(session)
    body = templates.get_template("signed_out.html").render()
    response = HTMLResponse(body, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/")
    return response


def _words(exc: HTTPException | ValidationError) -> str:
    """A refusal as a sentence for the page."""
    if isinstance(exc, ValidationError):
        return "; ".join(error["msg"] for error in exc.errors())
    detail: Any = exc.detail
    if isinstance(detail, dict):
        return f"{detail.get('message') or detail.get('reason')} ({detail.get('reason')})"
    return str(detail)


def _request_id(given: str | None) -> str:
    """The form's request id (its Idempotency-Key), or 400."""
    if given is None or not REQUEST_ID.fullmatch(given):
        raise HTTPException(400, "the form is incomplete: reload the page and try again")
    return given


class _Form(BaseModel):
    """What every owner form carries: the session's CSRF token and the render's request
    id. Every field optional and unchecked by FastAPI (see FormField)."""

    request_id: str | None = None
    csrf: str | None = None


# The change a form makes once its checks passed: given the session, the caller's role
# and the request id (the Idempotency-Key), it appends and returns the message to show.
Apply = Callable[[Session, Role, str], Awaitable[str]]


async def _change(
    request: Request, svc: Services, org_id: str, form: _Form, apply: Apply
) -> Response:
    """The checks every form shares, then the change: 401/403/404/400 as an error page
    (and nothing changes); a refused change as a message on the page."""
    try:
        session = await _session(request, svc, form.csrf)
        role = await owner(svc, session.caller, org_id)
        key = _request_id(form.request_id)
    except HTTPException as exc:
        return error_page(exc)
    try:
        done = await apply(session, role, key)
    except (HTTPException, ValidationError) as exc:
        await svc.sessions.say(session, "error", f"Not changed: {_words(exc)}")
    else:
        await svc.sessions.say(session, "done", done)
    return _back(org_id)


def _limit(limit: str | None, unlimited: str | None) -> tuple[str | None, str]:
    """The form's cap as the API's body takes it, and how the message says it."""
    if unlimited:
        return None, "unlimited"
    text = (limit or "").strip().removeprefix("$").replace(",", "")
    if not text:
        raise HTTPException(422, "enter an amount in dollars (e.g. 250.00), or choose unlimited")
    change = CapChange.model_validate({"limit": text})
    assert change.limit is not None
    return format_usd(change.limit), f"${format_usd(change.limit)}"


class CapForm(_Form):
    """A cap form's fields: `limit` in dollars, or `unlimited`."""

    limit: str | None = None
    unlimited: str | None = None


async def _set_cap(
    request: Request, svc: Services, org_id: str, user_id: str | None, form: CapForm
) -> Response:
    async def apply(session: Session, role: Role, key: str) -> str:
        value, said = _limit(form.limit, form.unlimited)
        data = {"user_id": user_id, "limit": value}
        await append(
            svc, session.caller, role, org_id, kind="spend_cap.set", data=data, idempotency_key=key
        )
        whose = "Organization cap" if user_id is None else f"Cap of {user_id}"
        return f"{whose} set to {said} — {TAKES_EFFECT}."

    return await _change(request, svc, org_id, form, apply)


@router.post("/orgs/{org_id}/usage/org-cap", response_class=HTMLResponse)
async def org_cap_form(
    request: Request, org_id: OrgId, svc: Svc, form: Annotated[CapForm, Form()]
) -> Response:
    return await _set_cap(request, svc, org_id, None, form)


@router.post("/orgs/{org_id}/usage/members/{user_id}/cap", response_class=HTMLResponse)
async def member_cap_form(
    request: Request, org_id: OrgId, user_id: UserId, svc: Svc, form: Annotated[CapForm, Form()]
) -> Response:
    return await _set_cap(request, svc, org_id, user_id, form)


class CreditForm(_Form):
    """A purchase: `amount` in dollars; its purchase id is `console-<request id>`."""

    amount: str | None = None


@router.post("/orgs/{org_id}/usage/credits", response_class=HTMLResponse)
async def credits_form(
    request: Request, org_id: OrgId, svc: Svc, form: Annotated[CreditForm, Form()]
) -> Response:
    async def apply(session: Session, role: Role, key: str) -> str:
        text = (form.amount or "").strip().removeprefix("$").replace(",", "")
        if not text:
            raise HTTPException(422, "enter an amount in dollars (e.g. 100.00)")
        purchase = CreditPurchase.model_validate({"purchase_id": f"console-{key}", "amount": text})
        data = {"purchase_id": purchase.purchase_id, "amount": format_usd(purchase.amount)}
        await append(
            svc,
            session.caller,
            role,
            org_id,
            kind="credits.purchased",
            data=data,
            idempotency_key=key,
        )
        return f"${format_usd(purchase.amount)} of credits bought — {TAKES_EFFECT}."

    return await _change(request, svc, org_id, form, apply)


class EndpointForm(_Form):
    """The webhook endpoint form: a URL, and whether to issue a new signing secret."""

    url: str | None = None
    rotate_secret: str | None = None


@router.post("/orgs/{org_id}/usage/notification-endpoint", response_class=HTMLResponse)
async def endpoint_form(
    request: Request, org_id: OrgId, svc: Svc, form: Annotated[EndpointForm, Form()]
) -> Response:
    """Register or replace the webhook endpoint: the API's `PUT …/notification-endpoint`
    (same checks, same event); the signing secret is in the message, shown once."""

    async def apply(session: Session, _role: Role, key: str) -> str:
        body = EndpointChange.model_validate(
            {"url": (form.url or "").strip(), "rotate_secret": bool(form.rotate_secret)}
        )
        registered = await set_endpoint(org_id, body, svc, session.caller, key=key)
        # Always the secret in force, as the API answers: a form sent twice (a double
        # click) shows only the second answer, whose request no longer rotates it.
        which = "New signing secret" if registered.secret_rotated else "Signing secret"
        return (
            f"Webhooks go to {registered.url} — {TAKES_EFFECT}. {which} (shown only here, "
            f"copy it now): {registered.secret}"
        )

    return await _change(request, svc, org_id, form, apply)


@router.post("/orgs/{org_id}/usage/notification-endpoint/remove", response_class=HTMLResponse)
async def endpoint_removal_form(
    request: Request, org_id: OrgId, svc: Svc, form: Annotated[_Form, Form()]
) -> Response:
    """Stop sending webhooks: the API's `DELETE …/notification-endpoint`."""

    async def apply(session: Session, _role: Role, key: str) -> str:
        await get_endpoint(org_id, svc, session.caller)  # 404 when there is none
        await remove_endpoint(org_id, svc, session.caller, key=key)
        return "Webhooks are no longer sent."

    return await _change(request, svc, org_id, form, apply)
