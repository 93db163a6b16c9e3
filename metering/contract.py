"""The generated parts of the public contract, so the documents cannot drift from the code.

`python -m metering.contract` (`make contract`) writes:
- `schemas/jsonschema/*.json`: the JSON Schema of every wire model (`schemas.export`);
- `docs/openapi.json`: the HTTP API's OpenAPI document, from the FastAPI app;
- the blocks between `<!-- BEGIN GENERATED <name> -->` and `<!-- END GENERATED <name> -->`
  in README.md and docs/*.md: the topic table (`metering.topics`), the account event
  types and output fields (the pydantic models), the HTTP endpoints (the OpenAPI
  document), the commands (the CLIs), the settings (`metering.settings`), the reason
  codes and enumerations (their enums), the price book (`billing/data/price_book.json`).

`tests/docs/test_contract.py` fails when a checked-in file differs from what this module
generates. The prose around the blocks is written by hand.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, TypeAdapter

from billing.accounts import AccountRejection
from billing.enforcement import BlockReason
from billing.pricing import PriceBook, default_price_book_text
from metering.settings import Settings
from metering.topics import TopicNames
from schemas import export
from schemas.account import ACCOUNT_EVENT_MODELS, AccountOutcome, BillingMode, Plan, Role, SeatType
from schemas.documents import (
    CreditStatement,
    Document,
    DocumentKind,
    DocumentLine,
    DocumentOrigin,
    IssuedDocumentRecord,
)
from schemas.money import format_usd
from schemas.outputs import (
    DeadLetter,
    DeliveryChannel,
    DeliveryDeadLetter,
    DeliveryFailure,
    DeliveryStatus,
    Notification,
    NotificationDelivery,
    NotificationKind,
    PricedUsage,
)
from schemas.usage import Surface, UsageEvent
from schemas.validation import Reason

ROOT = Path(__file__).resolve().parents[1]
OPENAPI = ROOT / "docs" / "openapi.json"
MARKDOWN = (ROOT / "README.md", ROOT / "docs" / "contract.md", ROOT / "docs" / "rules.md")
BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED (?P<name>[a-z-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- END GENERATED (?P=name) -->)",
    re.DOTALL,
)


class ContractError(RuntimeError):
    """Something the generated contract cannot describe (e.g. an undocumented code)."""


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _code(text: object) -> str:
    return f"`{text}`"


# -- topics ---------------------------------------------------------------------------------

# Which model each topic's values follow, and who writes them.
_TOPIC_VALUES: dict[str, tuple[str, str]] = {
    "usage_events": ("usage_event.v1.json", "product services (the emitter SDK)"),
    "account_events": ("account_event.v1.json", "owners (HTTP API), sales and operations"),
    "account_outcomes": ("account_outcome.v1.json", "`metering worker`"),
    "usage_priced": ("priced_usage.v1.json", "`metering worker`"),
    "usage_deadletter": ("dead_letter.v1.json", "`metering worker`, the ClickHouse sink"),
    "notifications": ("notification.v1.json", "`metering worker`"),
    "documents": (
        "issued_document.v1.json",
        "`billing run`, the nightly batch (monthly documents); `metering worker` (seat invoices)",
    ),
    "notification_marks": (
        "a set member, `1` (a removed one: a tombstone)",
        "`metering worker`",
    ),
    "notification_deliveries": ("notification_delivery.v1.json", "`metering notifier`"),
    "notification_deadletter": (
        "notification_dead_letter.v1.json",
        "`metering notifier`",
    ),
}


def _retention(config: dict[str, str]) -> str:
    if config.get("cleanup.policy") == "compact":
        return "compacted: the latest value of each key, forever"
    milliseconds = int(config.get("retention.ms", "-1"))
    if milliseconds < 0:
        return "forever"
    days, rest = divmod(milliseconds, 24 * 3600 * 1000)
    return f"{days} days" if not rest else f"{milliseconds} ms"


def topics_block(here: Path) -> str:
    """`here`: the directory of the file the table goes in (links are relative to it)."""
    schemas = Path(os.path.relpath(export.OUT_DIR, here)).as_posix()
    names = TopicNames()
    by_name = {getattr(names, attribute): attribute for attribute in _TOPIC_VALUES}
    rows = []
    for spec in names.specs():
        attribute = by_name.get(spec.name)
        if attribute is None:
            raise ContractError(f"topic {spec.name} has no value model in metering/contract.py")
        schema, writer = _TOPIC_VALUES[attribute]
        stamped = spec.config.get("message.timestamp.type", "CreateTime")
        rows.append(
            (
                _code(spec.name),
                spec.purpose,
                "`org_id`",
                f"[`{schema}`]({schemas}/{schema})" if schema.endswith(".json") else schema,
                writer,
                _retention(spec.config),
                "broker append time" if stamped == "LogAppendTime" else "producer's",
            )
        )
    header = ("topic", "what", "key", "value (JSON Schema)", "written by", "retention", "timestamp")
    return _table(header, rows)


# -- models ---------------------------------------------------------------------------------


def _one_of(values: list[Any]) -> str:
    return "one of " + ", ".join(_code(v) for v in values)


def _type(schema: dict[str, Any], definitions: dict[str, Any]) -> str:  # noqa: PLR0911
    """A short readable type from a JSON Schema node."""
    if "$ref" in schema:
        name: str = schema["$ref"].rsplit("/", 1)[-1]
        target = definitions.get(name, {})
        if "enum" in target:
            return _one_of(target["enum"])
        return name
    if "anyOf" in schema:
        parts = [_type(part, definitions) for part in schema["anyOf"]]
        return " or ".join(dict.fromkeys(parts))
    if "const" in schema:
        return _code(json.dumps(schema["const"]))
    if "enum" in schema:
        return _one_of(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return {"date": "date", "date-time": "timestamp"}.get(schema.get("format", ""), "string")
    if kind == "array":
        items = schema.get("items") or schema.get("prefixItems", [{}])[0]
        return f"list of {_type(items, definitions)}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"object of {_type(values, definitions)}" if values else "object"
    return str(kind or "any")


def _fields(model: type[BaseModel], leave_out: frozenset[str] = frozenset()) -> str:
    """`name` (type), … for a model's fields (but `leave_out`); optional ones say so."""
    schema = TypeAdapter(model).json_schema(mode="validation")
    definitions = schema.get("$defs", {})
    required = set(schema.get("required", []))
    parts = []
    for name, node in schema["properties"].items():
        if name in leave_out:
            continue
        optional = "" if name in required else ", optional"
        parts.append(f"`{name}` ({_type(node, definitions)}{optional})")
    return ", ".join(parts) if parts else "none"


def account_events_block(_here: Path) -> str:
    rows = []
    for model in ACCOUNT_EVENT_MODELS:
        event_type = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        data = model.model_fields["data"].annotation
        assert isinstance(data, type) and issubclass(data, BaseModel)
        rows.append((_code(event_type), _fields(data)))
    return _table(("type", "data"), rows)


def outputs_block(_here: Path) -> str:
    models: list[tuple[str, type[BaseModel]]] = [
        ("`usage.events.v1`", UsageEvent),
        ("`account.outcomes.v1`", AccountOutcome),
        ("`usage.priced.v1`", PricedUsage),
        ("`usage.deadletter.v1`", DeadLetter),
        ("`billing.notifications.v1`", Notification),
        ("`billing.documents.v1`", IssuedDocumentRecord),
        ("`billing.notification_deliveries.v1`", NotificationDelivery),
        ("`billing.notification_deadletter.v1`", DeliveryDeadLetter),
        ("a document (`<document_id>.json`)", Document),
        ("a document line", DocumentLine),
    ]
    rows = [(what, _fields(model)) for what, model in models]
    inherited = frozenset(Document.model_fields)
    rows.append(("a credit statement, besides", _fields(CreditStatement, leave_out=inherited)))
    return _table(("what", "fields"), rows)


# -- HTTP API -------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    from metering.api.app import create_api  # noqa: PLC0415 - FastAPI only when asked

    # A placeholder secret: building the app reads no file and opens no connection.
    app = create_api(Settings(api_secret="generating-the-openapi-document-only"))
    document: dict[str, Any] = app.openapi()
    return document


def http_block(_here: Path) -> str:
    rows = []
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            answers = sorted(code for code in operation["responses"] if code.startswith("2"))
            rows.append(
                (
                    f"`{method.upper()} {path}`",
                    operation.get("summary", ""),
                    ", ".join(answers),
                )
            )
    return _table(("endpoint", "what", "success"), rows)


# -- commands -------------------------------------------------------------------------------


def _commands(command: Any, path: list[str], context: typer.Context) -> Iterator[tuple[str, str]]:
    """(usage, first paragraph of help) of every command under `command`."""
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in sorted(subcommands.items()):
            child = typer.Context(sub, info_name=name, parent=context)
            yield from _commands(sub, [*path, name], child)
        return
    pieces = []
    for parameter in command.params:
        if parameter.param_type_name == "argument":
            pieces.append(parameter.name.upper())
            continue
        option = parameter.opts[0]
        if not parameter.is_flag:
            option += f" {parameter.name.upper()}"
        pieces.append(option if parameter.required else f"[{option}]")
    summary = (command.help or "").strip().split("\n\n")[0]
    yield " ".join([*path, *pieces]), " ".join(summary.split())


def commands_block(_here: Path) -> str:
    from metering.cli.billing import app as billing_app  # noqa: PLC0415
    from metering.cli.main import app as metering_app  # noqa: PLC0415

    rows = []
    for name, app in (("metering", metering_app), ("billing", billing_app)):
        group = typer.main.get_command(app)
        rows += [
            (_code(usage), summary)
            for usage, summary in _commands(group, [name], typer.Context(group, info_name=name))
        ]
    return _table(("command", "what"), rows)


# -- settings -------------------------------------------------------------------------------


def _shown_default(value: object) -> str:
    if isinstance(value, bool):
        return _code(str(value).lower())
    return _code(value)


def settings_block(_here: Path) -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ContractError(f"setting {name} has no description in metering/settings.py")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        shown = extra.get("shown")
        default = str(shown) if shown is not None else _shown_default(field.default)
        rows.append((_code(f"METERING_{name.upper()}"), default, field.description))
    return _table(("variable", "default", "what"), rows)


# -- reason codes and enumerations ----------------------------------------------------------

# What each code means to whoever reads it, per enum (the same code can mean something
# else elsewhere: `unknown_org` for usage and for an account event). Every code of these
# enums must be here: a new code is part of the contract, so it gets a sentence (the test
# says which is missing).
MEANINGS: dict[type[StrEnum], dict[str, str]] = {
    Reason: {
        "malformed_json": "the value is not JSON (or not UTF-8)",
        "payload_too_large": "the value is larger than 16 KiB",
        "missing_field": "a required field is missing",
        "unknown_field": "a field the contract does not have",
        "schema_violation": "a field has the wrong type or is out of its range",
        "invalid_id": "an id is empty, longer than 128 characters or outside "
        "`[A-Za-z0-9_.:@+-]` (starting alphanumeric)",
        "negative_tokens": "a token count below zero",
        "tokens_out_of_range": "a token count above 10,000,000, or not an integer",
        "naive_timestamp": "a timestamp without a zone",
        "future_event": "`occurred_at` more than 5 minutes after the broker received it",
        "unknown_surface": "a surface that is not one of the surfaces below",
        "unknown_event_type": "an account event `type` the contract does not have",
        "invalid_money": "an amount that is not a decimal string with at most 9 decimals",
        "date_out_of_range": "a date or timestamp outside 2000-01-01 – 2099-12-31 (what every "
        "store holds)",
        "unknown_model": "no rate for the model in the price-book version in force at "
        "`occurred_at` (re-drive once priced)",
        "unknown_org": "usage of an org with no `org.created` yet (re-drive once it exists)",
        "event_id_conflict": "an `event_id` seen before with a different payload",
        "invalid_priced_record": "a `usage.priced.v1` record the sink cannot read",
        "event_too_old": "`occurred_at` is more than `METERING_MAX_EVENT_AGE_DAYS` (35) days "
        "before the record reached the broker, or in a month whose de-duplication marks are "
        "no longer kept: nothing counted; re-drivable once the window is raised",
        "invalid_document_record": "a `billing.documents.v1` record the sink cannot read",
        "invalid_outcome_record": "an `account.outcomes.v1` record the sink cannot read",
        "amount_out_of_range": "counting the event would take a month's spend, a member's "
        "total or the balance past $1,000,000,000, or it alone costs more than $1,000,000: "
        "nothing counted",
        "enforcement_failed": "Redis refused the enforcement script for the event's org: "
        "nothing counted for it, the rest of the batch went on",
        "unstorable_record": "ClickHouse refused the record's row (the rest of its batch "
        "was stored)",
        "invalid_delivery_record": "a `billing.notification_deliveries.v1` record the sink "
        "cannot read",
    },
    AccountRejection: {
        "unknown_org": "an account event for an org with no `org.created`",
        "org_already_exists": "a second `org.created` for the org",
        "not_permitted": "the actor is not an owner or the primary owner of the org (by "
        "its member list) and the change needs one (R14)",
        "unknown_member": "the event names a user who is not a member",
        "member_already_exists": "`member.added` for a user who is a member",
        "seat_type_not_in_plan": "a seat type the org's plan does not sell (R2)",
        "seat_removal_refused": "removing more seats than are free: seats kept (held minus "
        "removals pending for the renewal) less the members holding them (R5)",
        "no_seat_available": "a member added to, or moved to, a seat type whose seats are all "
        "held (pending removals count as gone)",
        "primary_owner_protected": "the primary owner removed or demoted, a second primary "
        "owner added, or a transfer by someone other than the primary owner or the system",
        "no_price_in_force": "a seat fee due on a day no price-book version covers (re-drive "
        "once priced)",
        "not_self_serve": "credits bought for a sales-assisted org (R11)",
        "duplicate_purchase": "a `purchase_id` that was already credited",
        "renewal_not_later": "a renewal whose term does not start after the current one",
        "not_seat_based": "a migration requested by an org that is usage-based already (R7)",
        "balance_limit_exceeded": "the credits an org ever bought would pass $1,000,000,000",
    },
    DeliveryFailure: {
        "retries_exhausted": "the receiver kept failing (timeouts, connection errors, 408, "
        "429, 5xx; SMTP 4xx) for 24 h (`METERING_NOTIFY_RETRY_HOURS`) after the first attempt",
        "refused": "the receiver gave a final answer: HTTP 4xx other than 408/429, or 3xx "
        "(redirects are not followed); SMTP 5xx",
        "address_not_allowed": "the endpoint's host resolved to a loopback, private, "
        "link-local or other non-public address when connecting (SSRF protection)",
    },
    BlockReason: {
        "unknown_member": "the user is not a member of the org",
        "surface_not_in_seat": "the member's seat does not include this surface (R10)",
        "credits_exhausted": "the self-serve org's credit balance is zero or below (R11)",
        "org_cap_reached": "the org's spend this month reached its cap (R15)",
        "user_cap_reached": "the member's spend this month reached their cap (R15)",
        "seat_allowance_exhausted": "the member used up their seat's monthly usage allowance "
        "and the org has no extra usage (R6)",
    },
}

_REASON_SOURCES: list[tuple[type[StrEnum], str]] = [
    (Reason, "dead letter (`usage.deadletter.v1` `reason`): input refused"),
    (
        AccountRejection,
        "dead letter of an account event refused by the rules; the HTTP API's 409 `reason`",
    ),
    (
        BlockReason,
        "the gate's `reason` (in this order of priority, R15); `stopped`/`resumed` "
        "notifications' `reason`",
    ),
    (
        DeliveryFailure,
        "a delivery given up (`billing.notification_deadletter.v1` `reason`); re-drivable",
    ),
]


def reasons_block(_here: Path) -> str:
    rows = []
    for enum, where in _REASON_SOURCES:
        for code in enum:
            meaning = MEANINGS.get(enum, {}).get(code.value)
            if meaning is None:
                raise ContractError(
                    f"reason code {code.value} ({enum.__name__}) has no meaning in "
                    "metering/contract.py MEANINGS"
                )
            rows.append((_code(code.value), meaning, where))
    return _table(("code", "meaning", "where it appears"), rows)


def enums_block(_here: Path) -> str:
    enums: list[tuple[str, type[StrEnum]]] = [
        ("plan", Plan),
        ("billing mode", BillingMode),
        ("role", Role),
        ("seat type", SeatType),
        ("surface", Surface),
        ("notification kind", NotificationKind),
        ("delivery channel (`billing.notification_deliveries.v1`)", DeliveryChannel),
        ("delivery status", DeliveryStatus),
        ("document kind", DocumentKind),
        ("document origin (`billing.documents.v1`)", DocumentOrigin),
    ]
    rows = [(name, ", ".join(_code(v.value) for v in enum)) for name, enum in enums]
    return _table(("field", "values"), rows)


# -- price book -----------------------------------------------------------------------------


def price_book_block(_here: Path) -> str:
    book = PriceBook.from_json(default_price_book_text())
    parts = []
    for version in book.versions:
        parts.append(f"Version effective from {version.effective_from} (00:00 UTC).\n\n")
        parts.append(
            _table(
                ("model", "input", "output", "cache write", "cache read"),
                [
                    (
                        _code(model),
                        # Rates are held in nano-USD per million tokens.
                        *(
                            format_usd(r)
                            for r in (
                                rates.input,
                                rates.output,
                                rates.cache_write,
                                rates.cache_read,
                            )
                        ),
                    )
                    for model, rates in version.models.items()
                ],
            )
        )
        parts.append("\nUSD per million tokens (`cache write` prices ")
        parts.append("`cache_creation_input_tokens`, `cache read` `cache_read_input_tokens`).\n\n")
        parts.append(
            _table(
                ("seat", "monthly fee", "usage included per month"),
                [
                    (
                        _code(seat.value),
                        format_usd(price.monthly_fee),
                        format_usd(price.monthly_usage_allowance)
                        if price.monthly_usage_allowance
                        else "—",
                    )
                    for seat, price in version.seats.items()
                ],
            )
        )
        parts.append("\nUSD per user per month.\n")
    return "".join(parts)


BLOCKS: dict[str, Callable[[Path], str]] = {
    "topics": topics_block,
    "account-events": account_events_block,
    "outputs": outputs_block,
    "http": http_block,
    "commands": commands_block,
    "settings": settings_block,
    "reasons": reasons_block,
    "enums": enums_block,
    "price-book": price_book_block,
}


def render(text: str, here: Path) -> str:
    """`text` (of a file in directory `here`) with every generated block replaced by what
    the code says now."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ContractError(f"unknown generated block {name!r}")
        return match.group(1) + BLOCKS[name](here) + match.group(4)

    return BLOCK.sub(fill, text)


def expected() -> dict[Path, str]:
    """Every generated file's path → the text it should have."""
    files = {export.OUT_DIR / name: text for name, text in export.generated().items()}
    files[OPENAPI] = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    for path in MARKDOWN:
        files[path] = render(path.read_text(), path.parent)
    return files


def main() -> None:
    for path, text in expected().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
