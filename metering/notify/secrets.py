"""Webhook signing secrets, derived rather than stored.

An org's secret is HMAC-SHA256(signing key, org + secret id), shown as `whsec_<base64>`
(the Standard Webhooks form). The account log holds only the secret id, which is random
and useless without the key; the key lives in the deployment (METERING_WEBHOOK_SIGNING_KEY,
or for local use a random one in `var/webhook-signing-key`). So the log — kept forever,
read by the sink, copied into the ClickHouse ledger and into backups — never holds a
secret, while any API or notifier process with the key can re-derive it after a Redis
rebuild or a restart (docs/decisions.md › Notification delivery).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from metering.settings import Settings

KEY_FILE = "webhook-signing-key"
MIN_KEY_LENGTH = 32
PREFIX = "whsec_"


def signing_key(settings: Settings) -> bytes:
    """METERING_WEBHOOK_SIGNING_KEY, or the local random key (created once, atomically:
    `metering run` starts the API and the notifier at the same moment, and both must
    read the same key)."""
    configured = settings.webhook_signing_key
    if configured:
        if len(configured) < MIN_KEY_LENGTH:
            raise ValueError(
                f"METERING_WEBHOOK_SIGNING_KEY must be at least {MIN_KEY_LENGTH} characters"
            )
        return configured.encode()
    path = settings.var_dir / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        draft.write_text(secrets.token_urlsafe(48))
        draft.chmod(0o600)
        try:
            os.link(draft, path)  # fails if another process made it first: use theirs
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return Path(path).read_text().strip().encode()


def new_secret_id() -> str:
    return secrets.token_hex(16)


def webhook_secret(key: bytes, org_id: str, secret_id: str) -> str:
    """The org's signing secret for `secret_id`, as given to the owner (`whsec_…`)."""
    derived = hmac.new(key, f"webhook-secret\n{org_id}\n{secret_id}".encode(), hashlib.sha256)
    return PREFIX + base64.b64encode(derived.digest()).decode()
