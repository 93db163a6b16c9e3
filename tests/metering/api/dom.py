"""Reading the console's pages in tests: what they look at, found by ids and data
attributes (the pages' stable hooks), not by layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr"}


@dataclass
class _Open:
    tag: str
    attrs: dict[str, str | None]
    text: list[str] = field(default_factory=list)


class Dom(HTMLParser):
    """The text (and classes) of every element with an id, the href of every link with
    one; the cells (by their last class) of each `tr` with a `data-user` (`rows`) or a
    `data-seat` (`seats`); the text of each `li` with a `data-seat` (`pending`); and the
    chart's bars."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.classes: dict[str, set[str]] = {}
        self.links: dict[str, str] = {}
        self.rows: dict[str, dict[str, str]] = {}
        self.seats: dict[str, dict[str, str]] = {}
        self.pending: dict[str, str] = {}
        self.bars: list[dict[str, str | None]] = []
        self._stack: list[_Open] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "rect" and "bar" in (found.get("class") or "").split():
            self.bars.append(found)
        if tag == "a" and found.get("id"):
            self.links[str(found["id"])] = str(found.get("href"))
        if tag not in VOID:
            self._stack.append(_Open(tag, found))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        for element in self._stack:
            element.text.append(data)

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            element = self._stack.pop()
            if element.tag == tag:
                break
        else:
            return
        text = " ".join("".join(element.text).split())
        if ident := element.attrs.get("id"):
            self.text[ident] = text
            self.classes[ident] = set((element.attrs.get("class") or "").split())
        if tag == "li" and (seat := element.attrs.get("data-seat")):
            self.pending[seat] = text
        if tag == "td":
            cell = ((element.attrs.get("class") or "").split() or [""])[-1]
            row = next((e for e in reversed(self._stack) if e.tag == "tr"), None)
            if row is not None and (user := row.attrs.get("data-user")):
                self.rows.setdefault(user, {})[cell] = text
            if row is not None and (seat := row.attrs.get("data-seat")):
                self.seats.setdefault(seat, {})[cell] = text

    def spend_by_day(self) -> dict[str, str]:
        return {str(bar["data-day"]): str(bar["data-spend"]) for bar in self.bars}
