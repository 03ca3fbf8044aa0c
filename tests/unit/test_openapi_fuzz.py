"""The prediction API against its own OpenAPI document, by schemathesis: every operation the document
declares, with requests generated from it (valid ones, which must be served, and schema-violating
ones, which must be refused with a 4xx), and every answer checked against the document — status
code declared, content type declared, body matching the declared schema, no 5xx.

The app is the real one (``functions/api/app.py`` imported as a container would, in-process over
ASGI) serving the real lean model trained by :mod:`tests.unit.test_serving_api`. The run is bounded
by counts (examples per operation and phase) and a per-example deadline, and deterministic
(derandomized, no example database): it either passes on every run or fails on every run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.unit.test_serving_api import MAX_ROWS, Api, Trained, load_api, trained  # noqa: F401 - fixtures

MAX_EXAMPLES = 40  # per operation and mode: ~15 s for the whole run here

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "checks": {
            # a batch beyond the document's maxItems is refused before validation, with the 413 the
            # document declares for it (schemathesis expects a 4xx from its own list)
            "negative_data_rejection": {
                "expected-statuses": ["400", "404", "405", "406", "409", "413", "415", "422"],
            },
        },
    }
)


@pytest.fixture
def api_schema(load_api: Callable[[Path | None], Api], trained: Trained) -> Any:  # noqa: F811 - fixtures
    api = load_api(trained.layer)
    return schemathesis.openapi.from_asgi("/openapi.json", api.module.app, config=CONFIG)


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis' lazy loader names each operation's subtest through ``node._nodeid``, which
    # pytest 9 no longer has: give it the node's id to extend
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=dt.timedelta(seconds=2),  # per example: a 50-row batch answers in milliseconds
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_every_operation_conforms_to_the_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_the_document_states_the_batch_limit(load_api: Callable[[Path | None], Api], trained: Trained) -> None:  # noqa: F811 - fixtures
    document = load_api(trained.layer).client.get("/openapi.json").json()
    batch = next(s for name, s in document["components"]["schemas"].items() if name.endswith("Batch"))
    assert batch["properties"]["rows"]["maxItems"] == MAX_ROWS
