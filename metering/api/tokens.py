"""Bearer tokens: signed (HS256 JWT), expiring, naming either one member of one org or a
product service (SPEC §4). The token says who the caller is; what they may do is decided
per request from the org's own member list (a member's role is never taken from the
token, so demoting an owner takes effect at once)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import jwt

ALGORITHM = "HS256"
ISSUER = "metering"
SECRET_FILE = "api-secret"
MIN_SECRET_LENGTH = 32  # HS256 wants a key of at least 256 bits (RFC 7518 §3.2)


class InvalidToken(ValueError):
    """Missing, malformed, tampered with, expired or signed with another secret."""


@dataclass(frozen=True)
class Caller:
    org_id: str | None  # a member's org; None for a service
    user_id: str | None
    service: str | None

    @property
    def is_service(self) -> bool:
        return self.service is not None

    @property
    def subject(self) -> str:
        return f"service:{self.service}" if self.service else f"member:{self.org_id}/{self.user_id}"


def issue(
    secret: str,
    *,
    now: datetime,
    ttl: timedelta,
    org_id: str | None = None,
    user_id: str | None = None,
    service: str | None = None,
) -> str:
    if (service is None) == (org_id is None or user_id is None):
        raise ValueError("a token names a member (org and user) or a service, not both")
    claims: dict[str, object] = {
        "iss": ISSUER,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if service is not None:
        claims["svc"] = service
    else:
        claims.update(org=org_id, user=user_id)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str, *, now: datetime) -> Caller:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss"], "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    # Expiry against the injected clock, not the machine's (deterministic tests).
    if int(claims["exp"]) <= int(now.timestamp()):
        raise InvalidToken("token expired")
    service, org, user = claims.get("svc"), claims.get("org"), claims.get("user")
    if isinstance(service, str) and org is None and user is None:
        return Caller(None, None, service)
    if isinstance(org, str) and isinstance(user, str) and service is None:
        return Caller(org, user, None)
    raise InvalidToken("invalid token: names neither a member nor a service")


def load_secret(configured: str, var_dir: Path) -> str:
    """METERING_API_SECRET, or for local use a random secret kept in var/api-secret
    (created once, mode 0600) so `metering token issue` and the API agree."""
    if configured:
        if len(configured) < MIN_SECRET_LENGTH:
            raise ValueError(f"METERING_API_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        return configured
    path = var_dir / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()
