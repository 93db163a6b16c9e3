"""Where an org's notifications go: its webhook endpoint and which kinds go to the
webhook and to email (owners only, R14).

Each change appends an account event (`notification_endpoint.set` / `.removed`,
`notification_routing.set`) like every owner control, so the configuration is in the log
of record: it survives a Redis rebuild and any restart, and the notifier reads it from
the folded state. The signing secret is not in the event: only a random `secret_id`,
from which the secret is derived with the deployment's signing key
(`metering.notify.secrets`). `PUT` answers with the secret in force after the change —
a new one when the endpoint is first registered or `rotate_secret` is set — and `GET`
never shows it.

The URL must be `https://` and resolve only to public addresses (SSRF protection; 422
otherwise), unless METERING_WEBHOOK_ALLOW_PRIVATE=true; the notifier checks the
addresses again on every connection.
"""

from __future__ import annotations

import hashlib
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException
from pydantic import Field

from billing.accounts import OrgAccount
from metering.api.commands import append
from metering.api.deps import IdempotencyKey, OrgId, Services, Svc, Who, owner
from metering.api.models import Appended
from metering.enforcement.keys import OrgKeys
from metering.enforcement.state_codec import decode_account
from metering.notify.addresses import AddressNotAllowed, check_url
from metering.notify.secrets import new_secret_id, signing_key, webhook_secret
from schemas.account import WebhookUrl
from schemas.common import Contract
from schemas.outputs import NotificationKind

router = APIRouter(tags=["notifications"])
ENDPOINT = "/v1/orgs/{org_id}/notification-endpoint"
SETTINGS = "/v1/orgs/{org_id}/notification-settings"

Kinds = Annotated[list[NotificationKind], Field(max_length=10)]


class EndpointChange(Contract):
    url: WebhookUrl = Field(
        description="where webhooks are POSTed; https, resolving to public addresses only "
        "(unless METERING_WEBHOOK_ALLOW_PRIVATE)"
    )
    rotate_secret: bool = Field(
        default=False,
        description="issue a new signing secret (always done when no endpoint is registered)",
    )


class EndpointRegistered(Contract):
    event_id: str
    type: str
    status: str = "accepted"
    url: str
    secret: str = Field(
        description="the signing secret in force after this change (`whsec_…`, Standard "
        "Webhooks): verify each webhook's `webhook-signature` with it. Shown only here"
    )
    secret_rotated: bool = Field(description="whether this request issued a new secret")


class EndpointView(Contract):
    url: str
    webhook_kinds: list[NotificationKind]


class NotificationSettings(Contract):
    webhook_kinds: Kinds = Field(description="kinds sent to the webhook endpoint")
    email_kinds: Kinds = Field(
        description="kinds emailed to the owners (and to the member, for their own cap "
        "notifications)"
    )


async def _state(svc: Svc, org_id: str) -> OrgAccount:
    state = decode_account(await svc.redis.get(OrgKeys(svc.prefix, org_id).account))
    if state is None:
        raise HTTPException(404, f"unknown org {org_id}")
    return state


async def _allowed(svc: Svc, url: str) -> None:
    """422 unless the URL may be used here: https, public addresses (or the override)."""
    if svc.settings.webhook_allow_private:
        return
    if urlsplit(url).scheme != "https":
        raise HTTPException(422, "the endpoint must be an https:// URL")
    try:
        await check_url(url)
    except AddressNotAllowed as exc:
        raise HTTPException(422, f"endpoint not allowed: {exc}") from None


async def registered_url(svc: Services, org_id: str) -> str | None:
    """The org's webhook endpoint, if one is registered (for the console)."""
    state = decode_account(await svc.redis.get(OrgKeys(svc.prefix, org_id).account))
    return state.webhook.url if state is not None and state.webhook is not None else None


@router.put(ENDPOINT, response_model=EndpointRegistered, status_code=202)
async def set_endpoint(
    org_id: OrgId, body: EndpointChange, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> EndpointRegistered:
    """Register or replace the org's webhook endpoint (owners). The answer carries the
    signing secret; a retry with the same Idempotency-Key gets the same one."""
    role = await owner(svc, who, org_id)
    await _allowed(svc, body.url)
    state = await _state(svc, org_id)
    rotate = state.webhook is None or body.rotate_secret
    if not rotate:
        assert state.webhook is not None
        secret_id = state.webhook.secret_id
    elif key is not None:  # the same on a retry, so the retry re-sends the same event
        proof = f"{org_id}\n{who.user_id}\n{key}\nwebhook-secret".encode()
        secret_id = hashlib.sha256(proof).hexdigest()[:32]
    else:
        secret_id = new_secret_id()
    appended = await append(
        svc,
        who,
        role,
        org_id,
        kind="notification_endpoint.set",
        data={"url": body.url, "secret_id": secret_id},
        idempotency_key=key,
    )
    return EndpointRegistered(
        event_id=appended.event_id,
        type=appended.type,
        url=body.url,
        secret=webhook_secret(signing_key(svc.settings), org_id, secret_id),
        secret_rotated=rotate,
    )


@router.get(ENDPOINT, response_model=EndpointView)
async def get_endpoint(org_id: OrgId, svc: Svc, who: Who) -> EndpointView:
    """The registered endpoint (owners); 404 when there is none. Never the secret."""
    await owner(svc, who, org_id)
    state = await _state(svc, org_id)
    if state.webhook is None:
        raise HTTPException(404, "no notification endpoint is registered")
    return EndpointView(url=state.webhook.url, webhook_kinds=list(state.webhook_kinds))


@router.delete(ENDPOINT, response_model=Appended, status_code=202)
async def remove_endpoint(
    org_id: OrgId, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> Appended:
    """Stop sending webhooks (owners); 404 when none is registered. Deliveries waiting
    for a retry are cancelled at their next attempt."""
    role = await owner(svc, who, org_id)
    state = await _state(svc, org_id)
    if state.webhook is None and key is None:
        raise HTTPException(404, "no notification endpoint is registered")
    return await append(
        svc, who, role, org_id, kind="notification_endpoint.removed", data={}, idempotency_key=key
    )


@router.get(SETTINGS, response_model=NotificationSettings)
async def get_settings(org_id: OrgId, svc: Svc, who: Who) -> NotificationSettings:
    """Which notification kinds go to the webhook and which to email (owners)."""
    await owner(svc, who, org_id)
    state = await _state(svc, org_id)
    return NotificationSettings(
        webhook_kinds=list(state.webhook_kinds), email_kinds=list(state.email_kinds)
    )


@router.put(SETTINGS, response_model=Appended, status_code=202)
async def set_settings(
    org_id: OrgId, body: NotificationSettings, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> Appended:
    """Route notification kinds (owners); every kind goes to both until this is set."""
    role = await owner(svc, who, org_id)
    data = {
        "webhook": sorted({kind.value for kind in body.webhook_kinds}),
        "email": sorted({kind.value for kind in body.email_kinds}),
    }
    return await append(
        svc, who, role, org_id, kind="notification_routing.set", data=data, idempotency_key=key
    )
