"""Writes the JSON Schema of every wire model to `schemas/jsonschema/` (`make contract`,
which also regenerates the rest of docs/contract.md: `metering/contract.py`).

The files are checked in so that clients in other languages can validate what they send
and read; a test fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.account import ACCOUNT_EVENT_ADAPTER, AccountOutcome
from schemas.documents import CreditStatement, Document, IssuedDocumentRecord
from schemas.outputs import (
    DeadLetter,
    DeliveryDeadLetter,
    Notification,
    NotificationDelivery,
    PricedUsage,
)
from schemas.price_book import PriceBookFile
from schemas.usage import UsageEvent

OUT_DIR = Path(__file__).parent / "jsonschema"


def generated() -> dict[str, str]:
    """File name → file text, exactly as it should be on disk."""
    adapters: dict[str, TypeAdapter[Any]] = {
        # Inputs (usage.events.v1, account.events.v1)
        "usage_event.v1.json": TypeAdapter(UsageEvent),
        "account_event.v1.json": ACCOUNT_EVENT_ADAPTER,
        # Outputs (account.outcomes.v1, usage.priced.v1, usage.deadletter.v1,
        # billing.notifications.v1, billing.documents.v1) and `billing run`'s documents
        "account_outcome.v1.json": TypeAdapter(AccountOutcome),
        "priced_usage.v1.json": TypeAdapter(PricedUsage),
        "dead_letter.v1.json": TypeAdapter(DeadLetter),
        "notification.v1.json": TypeAdapter(Notification),
        "issued_document.v1.json": TypeAdapter(IssuedDocumentRecord),
        # What `metering notifier` writes: attempts (and retry schedule), dead letters.
        "notification_delivery.v1.json": TypeAdapter(NotificationDelivery),
        "notification_dead_letter.v1.json": TypeAdapter(DeliveryDeadLetter),
        "document.json": TypeAdapter(CreditStatement | Document),
        "price_book.json": TypeAdapter(PriceBookFile),
    }
    return {
        name: json.dumps(adapter.json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"
        for name, adapter in adapters.items()
    }


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in generated().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")


if __name__ == "__main__":
    main()
