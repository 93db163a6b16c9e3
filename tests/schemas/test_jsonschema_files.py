"""The checked-in JSON Schema files match the models."""

from __future__ import annotations

from schemas.export import OUT_DIR, generated


def test_checked_in_json_schemas_match_the_models() -> None:
    """Given the pydantic models, when their JSON Schemas are generated, then each equals
    the checked-in file (run `make schemas` after changing a model)."""
    for name, text in generated().items():
        on_disk = (OUT_DIR / name).read_text()
        assert on_disk == text, f"schemas/jsonschema/{name} is stale: run `make schemas`"
    assert sorted(p.name for p in OUT_DIR.glob("*.json")) == sorted(generated())
