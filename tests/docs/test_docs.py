"""The repository stands on its own: its documents point only at files inside it, every
rule or guarantee id cited anywhere is defined in docs/rules.md, and what docs/rules.md
names — modules, tests — exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [ROOT / "README.md", *DOCS]
RULES = ROOT / "docs" / "rules.md"
# Where the code, tests and documents are: every text file under these is scanned.
SOURCES: tuple[str, ...] = ("README.md", "Makefile", "pyproject.toml", "docs", "schemas")
SOURCES += ("billing", "metering", "tests", "bench", "deploy")
SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "golden"}

ID = re.compile(r"\b([RG]\d+)\b")
DEFINITION = re.compile(r"^#{2,4} ([RG]\d+)\. ", re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# A path in the repository, optionally naming a test: `tests/x.py::test_y`.
CITED_PATH = re.compile(
    r"`((?:billing|metering|schemas|tests|deploy|bench|docs)/[\w./-]*)(?:::(\w+))?`"
)


def _text_files(*roots: str) -> Iterator[Path]:
    for name in roots:
        path = ROOT / name
        if path.is_file():
            yield path
            continue
        for found in sorted(path.rglob("*")):
            parts = set(found.relative_to(ROOT).parts)
            if (
                found.is_file()
                and not parts & SKIPPED_DIRS
                and not any(part.endswith(".egg-info") for part in parts)
            ):
                yield found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except UnicodeDecodeError:  # a binary file: nothing to cite
        return None


def test_nothing_points_outside_the_repository() -> None:
    """`grep -rn "\\.\\./shared" README.md docs/ metering/ billing/ schemas/` finds nothing
    (the project brief the work started from is not part of the repository)."""
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _text_files("README.md", "docs", "metering", "billing", "schemas")
        if (text := _read(path)) is not None
        for number, line in enumerate(text.splitlines(), start=1)
        if "../shared" in line
    ]
    assert found == []


def _defined_ids() -> set[str]:
    return set(DEFINITION.findall(RULES.read_text()))


def test_rules_define_the_rules_and_guarantees_once_each() -> None:
    defined = DEFINITION.findall(RULES.read_text())
    assert len(defined) == len(set(defined)), "an id is defined twice in docs/rules.md"
    assert set(defined) >= {f"R{n}" for n in range(1, 20)} | {f"G{n}" for n in range(1, 7)}


def test_every_cited_id_is_defined_in_the_rules() -> None:
    """Every R<n> / G<n> in code, tests, docs or README has a section in docs/rules.md."""
    defined = _defined_ids()
    undefined = sorted(
        f"{path.relative_to(ROOT)}: {rule}"
        for path in _text_files(*SOURCES)
        if (text := _read(path)) is not None
        for rule in set(ID.findall(text))
        if rule not in defined
    )
    assert undefined == []


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces → -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(document: Path) -> None:
    """Every relative link of README.md and docs/*.md names a file or folder of the
    repository, and a `#section` of a Markdown file names one of its headings."""
    broken = []
    for target in LINK.findall(FENCE.sub("", document.read_text())):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:: not a file
            continue
        file_part, _, anchor = target.partition("#")
        path = (document.parent / file_part).resolve() if file_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no such section")
    assert broken == []


def test_what_the_rules_name_exists() -> None:
    """The modules, folders and tests docs/rules.md names are real: a moved module or a
    renamed test shows up here rather than as a dead reference."""
    missing = []
    for cited, test in CITED_PATH.findall(RULES.read_text()):
        path = ROOT / cited
        if not path.exists():
            missing.append(cited)
        elif test and not re.search(rf"^(async )?def {test}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{cited}::{test}")
    assert missing == []
