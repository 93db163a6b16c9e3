"""The files of issued documents: `<document_id>.json`, the stored body byte for byte
(SPEC §4), and `<document_id>.html`, a rendering for people. Written atomically and only
when different, so a re-run leaves identical files untouched."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from metering.documents.records import parse_body
from metering.documents.store import StoredDocument
from schemas.documents import CreditStatement, Document, DocumentKind

TITLES = {
    DocumentKind.USAGE_INVOICE: "Usage invoice",
    DocumentKind.CREDIT_STATEMENT: "Credit statement",
    DocumentKind.SEAT_INVOICE: "Seat invoice",
}
_templates = Environment(
    loader=PackageLoader("metering.documents", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def render_html(document: Document) -> str:
    return _templates.get_template("document.html").render(
        doc=document,
        title=TITLES[document.kind],
        statement=isinstance(document, CreditStatement),
    )


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically replace `path` with `text` unless it holds exactly that already."""
    data = text.encode()
    if path.exists() and path.read_bytes() == data:
        return False
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".tmp-") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return True


def write_document_files(documents: Sequence[StoredDocument], out: Path) -> list[Path]:
    """Write each document's JSON and HTML under `out`; returns the JSON paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stored in documents:
        json_path = out / f"{stored.document_id}.json"
        write_if_changed(json_path, stored.body)
        write_if_changed(out / f"{stored.document_id}.html", render_html(parse_body(stored.body)))
        paths.append(json_path)
    return paths
