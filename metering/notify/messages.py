"""What a notification looks like to people: the webhook body (Standard Webhooks' shape:
`type`, `timestamp`, `data`) and the email (short plain text + HTML)."""

from __future__ import annotations

import hashlib
import html
import json
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from schemas.common import format_timestamp
from schemas.money import format_usd
from schemas.outputs import Notification, NotificationKind


def console_link(console_url: str, org_id: str) -> str:
    return f"{console_url.rstrip('/')}/orgs/{org_id}/usage"


def webhook_body(notification: Notification, decided_at: datetime, console_url: str) -> str:
    """The JSON body, the same bytes on every attempt (receivers may compare them). `data`
    holds the notification as published, its subject and the link to the Usage page."""
    data: dict[str, Any] = notification.model_dump(mode="json")
    subject = (
        {"type": "member", "user_id": notification.user_id}
        if notification.user_id
        else {"type": "org", "user_id": None}
    )
    data["subject"] = subject
    data["console_url"] = console_link(console_url, notification.org_id)
    body = {
        "type": f"billing.{notification.kind.value}",
        "timestamp": format_timestamp(decided_at),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"))


def _percent(fraction: str | None) -> str:
    if fraction is None:
        return "?"
    value = float(fraction) * 100  # display only: the notification keeps the exact string
    return f"{value:g} %"


def _usd(nano: int | None) -> str:
    return "?" if nano is None else format_usd(nano)


def _whose(notification: Notification) -> str:
    return f"{notification.user_id}'s" if notification.user_id else "the organization's"


def summary(notification: Notification) -> str:
    """One line saying what happened, for the subject and the first line of the text."""
    n = notification
    match n.kind:
        case NotificationKind.THRESHOLD_REACHED:
            return (
                f"{_percent(n.threshold)} of {_whose(n)} monthly spend cap reached "
                f"(${_usd(n.spend)} of ${_usd(n.cap)}, {n.month})"
            )
        case NotificationKind.STOPPED:
            return f"Usage stopped for {n.user_id or 'the organization'}: {n.reason} ({n.month})"
        case NotificationKind.RESUMED:
            return f"Usage resumed for {n.user_id or 'the organization'} ({n.reason} lifted)"
        case NotificationKind.BALANCE_LOW:
            return f"Credit balance ${_usd(n.balance)} fell below ${n.threshold}"
    return n.kind.value  # pragma: no cover - every kind is matched above


def _facts(notification: Notification) -> list[tuple[str, str]]:
    n = notification
    facts = [("Organization", n.org_id), ("Subject", n.user_id or "the organization")]
    for label, value in (
        ("Month", n.month),
        ("Threshold", n.threshold),
        ("Reason", n.reason),
        ("Spend (USD)", None if n.spend is None else format_usd(n.spend)),
        ("Cap (USD)", None if n.cap is None else format_usd(n.cap)),
        ("Balance (USD)", None if n.balance is None else format_usd(n.balance)),
    ):
        if value is not None:
            facts.append((label, value))
    facts.append(("Notification id", n.notification_id))
    return facts


def email_message(
    notification: Notification, *, sender: str, recipients: list[str], console_url: str
) -> EmailMessage:
    """The email of one notification. Its Message-ID is derived from the notification's
    id, so a repeat (after a crash) is recognisable as the same message."""
    link = console_link(console_url, notification.org_id)
    line = summary(notification)
    message = EmailMessage()
    message["Subject"] = f"[{notification.org_id}] {line}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    digest = hashlib.sha256(notification.notification_id.encode()).hexdigest()[:32]
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<{digest}@{domain}>"
    message["X-Notification-Id"] = notification.notification_id
    message["Date"] = format_datetime(datetime.now().astimezone())
    facts = _facts(notification)
    text = "\n".join([line, "", *(f"{k}: {v}" for k, v in facts), "", f"Usage: {link}", ""])
    message.set_content(text)
    rows = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in facts
    )
    message.add_alternative(
        "<!doctype html><html><body>"
        f"<p>{html.escape(line)}</p><table>{rows}</table>"
        f'<p><a href="{html.escape(link)}">Open the Usage page</a></p>'
        "</body></html>",
        subtype="html",
    )
    return message
