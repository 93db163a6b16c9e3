"""The generated parts of the contract match the code: the JSON Schemas, the OpenAPI
document and the generated tables of README.md and docs/*.md (`make contract` rewrites
them from metering/contract.py)."""

from __future__ import annotations

import re

import pytest

from metering import contract
from metering.settings import Settings
from schemas.validation import Reason


def test_generated_files_match_the_code() -> None:
    """Given the code as it is, when the contract is generated, then every checked-in
    generated file is exactly that (run `make contract` after changing a model, a topic,
    a setting, a command, a route or a reason code)."""
    stale = [
        str(path.relative_to(contract.ROOT))
        for path, text in contract.expected().items()
        if not path.exists() or path.read_text() != text
    ]
    assert stale == [], f"stale generated files: {stale}; run `make contract`"


def test_every_generated_block_is_known_and_filled() -> None:
    """The markers name blocks the generator knows, and each is filled."""
    for path in contract.MARKDOWN:
        blocks = list(contract.BLOCK.finditer(path.read_text()))
        assert blocks, f"{path.name} has no generated block"
        for block in blocks:
            assert block["name"] in contract.BLOCKS
            assert block["body"].strip(), f"{path.name}: block {block['name']} is empty"


def test_an_undocumented_reason_code_or_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reason code without a meaning, or a setting without a description, cannot be
    generated: adding one to the contract means saying what it is."""
    meanings = {enum: dict(codes) for enum, codes in contract.MEANINGS.items()}
    del meanings[Reason][Reason.UNKNOWN_ORG.value]
    monkeypatch.setattr(contract, "MEANINGS", meanings)
    missing = re.escape("unknown_org (Reason) has no meaning")
    with pytest.raises(contract.ContractError, match=missing):
        contract.reasons_block(contract.ROOT)
    monkeypatch.undo()

    described = Settings.model_fields["http_port"]
    monkeypatch.setattr(described, "description", None)
    with pytest.raises(contract.ContractError, match="setting http_port has no description"):
        contract.settings_block(contract.ROOT)
