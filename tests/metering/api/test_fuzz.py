"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

Every operation gets generated valid and invalid requests from each caller in turn: an
owner of org A, a member of org A, and a product service (on org A, and on generated org
ids). Whatever the input, the app must not answer 5xx, must answer only with the status
codes and content types the document declares, its bodies must match the declared
schemas, and invalid input must not be accepted. The app is the real one on the module's
private pipeline (real Redis, real Kafka): accepted writes append real account events,
which the worker applies.

The operations are driven with `APIOperation.as_strategy` under Hypothesis rather than
`schemathesis.pytest.from_fixture`, whose lazy loader reads `Node._nodeid`, gone in
pytest 9.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.schemas import OpenApiSchema

from metering.api.app import create_api
from metering.settings import Settings
from tests.e2e.pipeline import Pipeline
from tests.metering.api.conftest import ORG_A, token

MAX_EXAMPLES = 25  # per operation, caller and mode (valid / invalid input)
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
# Who calls, and the path parameters pinned for them (the rest are generated). Another
# org's id is a 403 before anything else runs (test_auth_matrix.py), so members and owners
# are pinned to org A to reach the deep paths; the member asks about themselves. A
# service may ask the gate about any org: once on org A, once on generated org ids.
CALLERS: dict[str, tuple[tuple[str | None, ...], dict[str, str]]] = {
    "owner": ((ORG_A, "olga"), {"org_id": ORG_A}),
    "member": ((ORG_A, "max"), {"org_id": ORG_A, "user_id": "max"}),
    "service": ((None, None, "chat-frontend"), {"org_id": ORG_A}),
    "service-any-org": ((None, None, "chat-frontend"), {}),
}
# The document is the app's own; building it needs no Redis or Kafka.
DOCUMENT = create_api(Settings()).openapi()


def _inputs(operation: dict[str, Any]) -> set[str]:
    names = {parameter["name"] for parameter in operation.get("parameters", [])}
    return names | ({"body"} if "requestBody" in operation else set())


# (caller, method, path, mode); no invalid-input run where the caller pins every input
# (e.g. the preview, whose only input is the org id): there is nothing left to negate.
RUNS = [
    pytest.param(who, method.upper(), path, mode, id=f"{who}-{method.upper()} {path}-{mode}")
    for who, (_, pinned) in CALLERS.items()
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for mode in schemathesis.GenerationMode
    if mode is schemathesis.GenerationMode.POSITIVE or _inputs(operation) - set(pinned)
]
CONFIG: dict[str, Any] = {
    "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    # The caller's own bearer token on every request, not generated ones.
    "generation": {"with-security-parameters": False},
    "operations": [
        {
            # Documented: a preview needs ClickHouse; this app has none (503).
            "include-path": "/v1/orgs/{org_id}/documents/preview",
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "4xx", 503]}},
        }
    ],
}


@pytest.fixture(scope="module")
def api_schema(api_pipeline: Pipeline) -> Iterator[OpenApiSchema]:
    """Loaded from the app itself; schemathesis calls the app in-process (ASGI) and runs
    its lifespan once, so Redis and the producer are the pipeline's real ones."""
    app = create_api(api_pipeline.settings)
    config = schemathesis.Config.from_dict(CONFIG)
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    shutdown_lifespans()  # flushes the app's producer before the pipeline's topics go


@pytest.mark.parametrize(("who", "method", "path", "mode"), RUNS)
def test_no_server_errors_and_only_documented_responses(
    api_schema: OpenApiSchema, who: str, method: str, path: str, mode: schemathesis.GenerationMode
) -> None:
    claims, path_parameters = CALLERS[who]
    operation = api_schema[path][method]
    strategy = operation.as_strategy(
        generation_mode=mode,
        headers={"Authorization": f"Bearer {token(*claims)}"},
        path_parameters={k: v for k, v in path_parameters.items() if f"{{{k}}}" in path},
    )

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate()

    fuzz()
