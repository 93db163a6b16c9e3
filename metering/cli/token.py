"""`metering token issue`: bearer tokens for the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from metering.api.tokens import issue as issue_token
from metering.api.tokens import load_secret
from metering.cli.output import console, fail
from metering.settings import Settings

app = typer.Typer(help="Bearer tokens for the HTTP API (signed with METERING_API_SECRET).")


@app.command()
def issue(
    org: Annotated[str | None, typer.Option(help="the member's org")] = None,
    user: Annotated[str | None, typer.Option(help="the member's user id")] = None,
    service: Annotated[
        str | None, typer.Option(help="a product service (may call the gate for any org)")
    ] = None,
    ttl_hours: Annotated[
        float | None, typer.Option(help="lifetime; default METERING_TOKEN_TTL_HOURS (24)")
    ] = None,
) -> None:
    """Print a token for one member of one org (--org, --user) or a service (--service)."""
    settings = Settings()
    member = org is not None and user is not None
    if member == (service is not None) or (org is None) != (user is None):
        fail("give --org and --user for a member, or --service for a product service")
    ttl = timedelta(hours=ttl_hours if ttl_hours is not None else settings.token_ttl_hours)
    if ttl <= timedelta(0):
        fail("--ttl-hours must be positive")
    secret = load_secret(settings.api_secret, settings.var_dir)
    token = issue_token(
        secret, now=datetime.now(UTC), ttl=ttl, org_id=org, user_id=user, service=service
    )
    console.print(token, soft_wrap=True, highlight=False)
