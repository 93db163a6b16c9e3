"""`metering token issue|revoke|revoked`: bearer tokens for the HTTP API."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from metering.api.revocations import revoke as revoke_service
from metering.api.revocations import revoked as revoked_services
from metering.api.session import DEFAULT_LINK_TTL, MAX_LINK_TTL, login_token
from metering.api.session import login_link as login_link_url
from metering.api.tokens import check_name, load_secret
from metering.api.tokens import issue as issue_token
from metering.cli.output import console, fail
from metering.redis_clients import sync_client
from metering.settings import MAX_TOKEN_TTL_HOURS, Settings

app = typer.Typer(help="Bearer tokens for the HTTP API (signed with METERING_API_SECRET).")


@app.command()
def issue(
    org: Annotated[str | None, typer.Option(help="the member's org")] = None,
    user: Annotated[str | None, typer.Option(help="the member's user id")] = None,
    service: Annotated[
        str | None, typer.Option(help="a product service (may call the gate for any org)")
    ] = None,
    ttl_hours: Annotated[
        float | None,
        typer.Option(
            help=f"lifetime; default METERING_TOKEN_TTL_HOURS (24), at most {MAX_TOKEN_TTL_HOURS}"
        ),
    ] = None,
) -> None:
    """Print a token for one member of one org (--org, --user) or a service (--service)."""
    settings = Settings()
    member = org is not None and user is not None
    if member == (service is not None) or (org is None) != (user is None):
        fail("give --org and --user for a member, or --service for a product service")
    hours = ttl_hours if ttl_hours is not None else settings.token_ttl_hours
    if not (math.isfinite(hours) and 0 < hours <= MAX_TOKEN_TTL_HOURS):
        fail(f"--ttl-hours must be more than 0 and at most {MAX_TOKEN_TTL_HOURS} (90 days)")
    try:
        for what, name in (("--org", org), ("--user", user), ("--service", service)):
            if name is not None:
                check_name(what, name)
        secret = load_secret(settings.api_secret, settings.var_dir)
    except ValueError as exc:
        fail(str(exc))
    token = issue_token(
        secret,
        now=datetime.now(UTC),
        ttl=timedelta(hours=hours),
        org_id=org,
        user_id=user,
        service=service,
    )
    console.print(token, soft_wrap=True, highlight=False)


@app.command()
def revoke(
    service: Annotated[str, typer.Option(help="the product service whose tokens to revoke")],
) -> None:
    """Revoke every token of a service issued until now (the API refuses them within a
    second); tokens issued afterwards work, so: revoke, then issue a new one."""
    settings = Settings()
    try:
        check_name("--service", service)
    except ValueError as exc:
        fail(str(exc))
    now = datetime.now(UTC)
    with sync_client(settings) as client:
        revoke_service(client, settings.redis_prefix, service, int(now.timestamp()))
    console.print(f"tokens of service {service} issued until {now:%Y-%m-%d %H:%M:%S} UTC revoked")


@app.command()
def revoked() -> None:
    """List the revoked services and since when their tokens are refused."""
    settings = Settings()
    with sync_client(settings) as client:
        listed = revoked_services(client, settings.redis_prefix)
    for name, moment in sorted(listed.items()):
        until = datetime.fromtimestamp(moment, UTC)
        console.print(f"{name}\ttokens issued until {until:%Y-%m-%d %H:%M:%S} UTC", highlight=False)


def login_link(
    org: Annotated[str, typer.Option(help="the member's org")],
    user: Annotated[str, typer.Option(help="the member's user id")],
    ttl_minutes: Annotated[
        float, typer.Option(help="how long the link may be opened (once): 1 to 1440 minutes")
    ] = DEFAULT_LINK_TTL.total_seconds() / 60,
) -> None:
    """Print a one-time sign-in link to the console (Organization settings › Usage) for
    one member: opening it once opens a browser session; it expires unused after
    --ttl-minutes. The link is for a person's browser; programs use `token issue`."""
    settings = Settings()
    if not (math.isfinite(ttl_minutes) and 1 <= ttl_minutes <= MAX_LINK_TTL.total_seconds() / 60):
        fail("--ttl-minutes must be 1 to 1440 (24 hours)")
    try:
        secret = load_secret(settings.api_secret, settings.var_dir)
        token = login_token(
            secret, org, user, now=datetime.now(UTC), ttl=timedelta(minutes=ttl_minutes)
        )
    except ValueError as exc:
        fail(str(exc))
    console.print(login_link_url(settings.console_url, token), soft_wrap=True, highlight=False)
