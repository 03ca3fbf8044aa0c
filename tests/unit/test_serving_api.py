"""The prediction API's contract, through FastAPI's test client and through the Lambda handler.

A real LightGBM model is trained here on hotel_rates, exported to the lean artifact and packed as the
model layer the API function reads (:func:`pricepipe.serving.model_layer.build_layer_zip`); the
layer's ``python/`` folder goes on ``sys.path``, as Lambda puts it there, and ``functions/api/app.py``
is imported fresh for each scenario, as a new container would.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import re
import subprocess
import sys
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from infrastructure import catalog
from pricepipe.contract import Contract, parse_contract
from pricepipe.features import build_features, feature_row
from pricepipe.lean_model import LeanModel
from pricepipe.observability import logger
from pricepipe.serving import prediction_log
from pricepipe.serving.columns import ColumnCheck, feature_columns
from pricepipe.serving.model_layer import build_layer_zip
from pricepipe.serving.requests import request_models
from pricepipe.settings import get_settings
from pricepipe.training.data import encode, fit_encoding
from pricepipe.training.search import FAMILIES, SearchSettings

APP = Path(__file__).resolve().parents[2] / "functions" / "api" / "app.py"
MAX_ROWS = 50
METADATA = {
    "model_name": "price-model",
    "model_version": "7",
    "alias": "champion",
    "run_id": "run-123",
    "metrics": {"rmse": 21.5, "mae": 15.2},
    "data_window": {"start": "2016-07-02", "end": "2016-12-31"},
}


@dataclass(frozen=True)
class Trained:
    model: LeanModel
    layer: Path  # the extracted layer (holds python/pricepipe_model/)
    rows: list[dict[str, Any]]  # request rows (every input column), not seen in training


@pytest.fixture(scope="module")
def trained(hotel_rates: pd.DataFrame, contract: Contract, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    raw = hotel_rates.dropna(subset=["country"])
    train = raw.iloc[:5000]
    features = build_features(train.assign(arrival_date=pd.to_datetime(train["arrival_date"])), contract)
    encoding = fit_encoding(features, contract)
    family = FAMILIES["lightgbm"]
    params = {**family.defaults(SearchSettings()), "max_depth": 6}
    fitted = family.fit(
        params,
        40,
        encode(features, encoding),
        features[contract.target].to_numpy(dtype=float),
        [encoding.index[name] for name in contract.categorical_features],
        seed=1,
    )
    lean = LeanModel(
        family.export(fitted, encoding),
        encoding,
        {"contract": {"name": contract.name, "version": contract.version}, "model_family": "lightgbm"},
    )
    layer = tmp_path_factory.mktemp("model-layer")
    zipfile.ZipFile(io.BytesIO(build_layer_zip(lean.to_bytes(), METADATA))).extractall(layer)
    later = raw.iloc[6000 : 6000 + 2 * MAX_ROWS].drop(columns=[contract.target])
    rows = json.loads(later.to_json(orient="records", date_format="iso"))
    for row in rows:
        row["arrival_date"] = row["arrival_date"][:10]
    return Trained(lean, layer, rows)


@dataclass
class Api:
    module: ModuleType
    client: TestClient
    log: io.StringIO  # what the function wrote to its log

    def handler(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Invoke the Lambda handler with an API Gateway (REST, v1) proxy event."""
        return self.module.handler(api_gateway_event(method, path, body), LambdaContext())

    def prediction_lines(self) -> list[prediction_log.PredictionLogLine]:
        lines = [prediction_log.parse_line(text) for text in self.log.getvalue().splitlines()]
        return [line for line in lines if line is not None]


class LambdaContext:
    function_name = "pricepipe-api"
    function_version = "3"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:pricepipe-api:live"
    memory_limit_in_mb = 512
    aws_request_id = "lambda-request-1"
    log_group_name = "/aws/lambda/pricepipe-api"
    log_stream_name = "2026/11/26/[3]abc"


def api_gateway_event(method: str, path: str, body: Any = None) -> dict[str, Any]:
    """An API Gateway REST API proxy event (payload format 1.0), as API Gateway sends it."""
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": "application/json", "Host": "abc.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": f"apigw-{uuid.uuid4()}",
            "identity": {"sourceIp": "203.0.113.9", "apiKey": "test-key"},
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


@pytest.fixture
def load_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path | None], Api]]:
    """Import functions/api/app.py as a fresh container would: with the given model layer on the path
    (or none), the function's environment, and its log captured."""
    formatter = logger.registered_formatter
    saved = (formatter.json_serializer, formatter.json_deserializer)  # type: ignore[attr-defined]
    log = io.StringIO()
    stream = logger.registered_handler.setStream(log)  # type: ignore[attr-defined]

    def load(layer: Path | None) -> Api:
        monkeypatch.delitem(sys.modules, "pricepipe_model", raising=False)
        if layer is not None:
            monkeypatch.syspath_prepend(str(layer / "python"))
        monkeypatch.setenv("PRICEPIPE_MAX_BATCH_ROWS", str(MAX_ROWS))
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "3")
        get_settings.cache_clear()
        spec = importlib.util.spec_from_file_location(f"api_app_{uuid.uuid4().hex}", APP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return Api(module, TestClient(module.app), log)

    yield load
    get_settings.cache_clear()
    logger.registered_handler.setStream(stream)  # type: ignore[attr-defined]
    formatter.json_serializer, formatter.json_deserializer = saved  # type: ignore[attr-defined]
    sys.modules.pop("pricepipe_model", None)


@pytest.fixture
def api(load_api: Callable[[Path | None], Api], trained: Trained) -> Api:
    return load_api(trained.layer)


@pytest.fixture
def api_without_model(load_api: Callable[[Path | None], Api]) -> Api:
    return load_api(None)


def expected(trained: Trained, contract: Contract, rows: list[dict[str, Any]]) -> np.ndarray:
    """The lean model's own predictions for these request rows, one row at a time."""
    return np.array([trained.model.predict_rows([feature_row(row, contract)])[0] for row in rows])


def errors_by_field(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {error["field"]: error for error in body["detail"]}


# -- valid requests -----------------------------------------------------------------------------------


def test_one_row_is_priced_as_the_lean_model_prices_it(api: Api, trained: Trained, contract: Contract) -> None:
    row = trained.rows[0]

    response = api.client.post("/predict", json=row)

    assert response.status_code == 200
    body = response.json()
    assert body["keys"] == [str(row["booking_id"])]
    assert body["model_name"] == "price-model" and body["model_version"] == "7"
    np.testing.assert_allclose(body["predictions"], expected(trained, contract, [row]), rtol=0, atol=1e-9)
    assert response.headers["x-model-version"] == "7"
    assert response.headers["x-request-id"] == body["request_id"]


def test_a_batch_is_priced_in_row_order_as_the_lean_model_prices_each_row(
    api: Api, trained: Trained, contract: Contract
) -> None:
    rows = trained.rows[:MAX_ROWS]

    response = api.client.post("/predict", json={"rows": rows})

    assert response.status_code == 200
    body = response.json()
    assert body["keys"] == [str(row["booking_id"]) for row in rows]
    np.testing.assert_allclose(body["predictions"], expected(trained, contract, rows), rtol=0, atol=1e-9)


def test_rows_the_fast_path_declines_are_validated_by_the_models_and_priced_alike(
    api: Api, trained: Trained, contract: Contract
) -> None:
    """An integer written with a fraction of zero (12.0, an integer to JSON Schema) is the models' to
    read: the batch takes the model path."""
    rows = [dict(row) for row in trained.rows[:5]]
    rows[2]["lead_time"] = float(rows[2]["lead_time"])

    assert ColumnCheck(contract).columns(rows) is None
    response = api.client.post("/predict", json={"rows": rows})

    assert response.status_code == 200
    reference = [{**row, "lead_time": int(row["lead_time"])} for row in rows]
    np.testing.assert_allclose(response.json()["predictions"], expected(trained, contract, reference), atol=1e-9)


def test_the_lambda_handler_answers_an_api_gateway_event_as_the_app_does(api: Api, trained: Trained) -> None:
    rows = trained.rows[:10]

    single = api.handler("POST", "/predict", rows[0])
    batch = api.handler("POST", "/predict", {"rows": rows})

    assert single["statusCode"] == 200 and batch["statusCode"] == 200
    assert single["headers"]["content-type"] == "application/json"
    assert json.loads(single["body"])["predictions"] == api.client.post("/predict", json=rows[0]).json()["predictions"]
    assert (
        json.loads(batch["body"])["predictions"]
        == api.client.post("/predict", json={"rows": rows}).json()["predictions"]
    )


def test_through_api_gateway_the_request_id_is_api_gateways(api: Api, trained: Trained) -> None:
    event = api_gateway_event("POST", "/predict", trained.rows[0])

    response = api.module.handler(event, LambdaContext())

    request_id = event["requestContext"]["requestId"]
    assert json.loads(response["body"])["request_id"] == request_id
    assert [line.request_id for line in api.prediction_lines()] == [request_id]


def test_only_the_first_invocation_goes_through_powertools_metrics(
    api: Api, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cold-start metric is Powertools' own, from the first invocation; later invocations skip its
    decorator (which flushed and warned about empty metrics on every one of them)."""
    from aws_lambda_powertools.metrics.provider.cold_start import reset_cold_start_flag

    reset_cold_start_flag()  # this test process has served other apps already
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = api.handler("POST", "/predict", trained.rows[0])
    printed_first = capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = api.handler("POST", "/predict", trained.rows[1])
    printed_second = capsys.readouterr().out

    assert first["statusCode"] == second["statusCode"] == 200
    (cold_start,) = [json.loads(line) for line in printed_first.splitlines() if '"ColdStart"' in line]
    assert cold_start["ColdStart"] == [1.0], cold_start
    assert printed_second == "" and caught == []
    assert len(api.prediction_lines()) == 2


def test_rows_listing_their_fields_in_other_orders_are_priced_alike(
    api: Api, trained: Trained, contract: Contract
) -> None:
    """The column path reads rows by position when they all share one field order, by name otherwise."""
    rows = trained.rows[:6]
    reordered = [dict(reversed(list(row.items()))) for row in rows]
    mixed = [reordered[i] if i % 2 else row for i, row in enumerate(rows)]
    check = ColumnCheck(contract)

    for batch in (reordered, mixed):
        assert check.columns(batch) is not None  # still the column path
        response = api.client.post("/predict", json={"rows": batch})
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["predictions"], expected(trained, contract, rows), atol=1e-9)


# -- invalid requests -----------------------------------------------------------------------------------


def test_every_invalid_field_of_a_batch_is_named_with_its_location(api: Api, trained: Trained) -> None:
    rows = [dict(row) for row in trained.rows[:6]]
    rows[3]["lead_time"] = -1
    rows[3]["meal"] = "all_inclusive"
    rows[4]["children"] = "two"
    del rows[5]["adults"]

    response = api.client.post("/predict", json={"rows": rows})

    assert response.status_code == 422
    errors = errors_by_field(response.json())
    assert set(errors) == {"rows[3].lead_time", "rows[3].meal", "rows[4].children", "rows[5].adults"}
    assert errors["rows[3].lead_time"]["loc"] == ["body", "rows", 3, "lead_time"]
    assert errors["rows[3].lead_time"]["type"] == "greater_than_equal"
    assert errors["rows[3].meal"]["type"] == "literal_error"
    assert errors["rows[4].children"]["type"] == "int_type"
    assert errors["rows[5].adults"]["type"] == "missing"
    assert api.prediction_lines() == []  # nothing priced, nothing logged


def test_a_single_rows_invalid_field_is_named(api: Api, trained: Trained) -> None:
    response = api.client.post("/predict", json={**trained.rows[0], "arrival_date": "2017-02-30"})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "arrival_date"] and error["field"] == "arrival_date"


def test_an_unknown_field_is_refused_so_a_typo_is_not_a_silent_missing_value(api: Api, trained: Trained) -> None:
    row = dict(trained.rows[0])
    row["lead_tme"] = row.pop("lead_time")

    response = api.client.post("/predict", json={"rows": [trained.rows[1], row]})

    assert response.status_code == 422
    errors = errors_by_field(response.json())
    assert errors["rows[1].lead_tme"]["type"] == "extra_forbidden"
    assert errors["rows[1].lead_time"]["type"] == "missing"


def test_a_batch_over_the_limit_is_413_naming_the_limit_and_the_count(api: Api, trained: Trained) -> None:
    rows = [{**trained.rows[i % len(trained.rows)], "booking_id": i + 1} for i in range(MAX_ROWS + 7)]

    response = api.client.post("/predict", json={"rows": rows})

    assert response.status_code == 413
    detail = response.json()["detail"]
    assert f"at most {MAX_ROWS} rows" in detail and f"has {MAX_ROWS + 7}" in detail


def test_a_key_repeated_within_a_batch_is_priced_row_by_row(api: Api, trained: Trained, contract: Contract) -> None:
    """The OpenAPI document allows it (no JSON Schema rule can forbid it): one booking priced under
    two scenarios gets both prices, in row order, and the log line holds every row."""
    rows = [trained.rows[0], trained.rows[1], {**trained.rows[0], "lead_time": trained.rows[0]["lead_time"] + 30}]

    response = api.client.post("/predict", json={"rows": rows})

    assert response.status_code == 200
    body = response.json()
    key = str(rows[0]["booking_id"])
    assert body["keys"] == [key, str(rows[1]["booking_id"]), key]
    np.testing.assert_allclose(body["predictions"], expected(trained, contract, rows), rtol=0, atol=1e-9)
    (line,) = api.prediction_lines()
    assert line.keys == body["keys"]


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("historical_adr", False, "float_type"),  # a float column
        ("lead_time", True, "int_type"),  # an integer column
        ("lead_time", "12", "int_type"),  # text is no number either
        ("lead_time", 12.5, "int_type"),
        ("country", 1, "string_type"),  # a number is no string
        ("meal", 1, "literal_error"),  # nor a category
        ("arrival_date", 1_500_000_000, "date_type"),  # nor a date (lax mode: a Unix time)
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_in_a_row_and_in_a_batch(
    api: Api, trained: Trained, column: str, value: Any, error: str
) -> None:
    single = api.client.post("/predict", json={**trained.rows[0], column: value})
    rows = [dict(row) for row in trained.rows[:8]]
    rows[5][column] = value
    batch = api.client.post("/predict", json={"rows": rows})

    assert single.status_code == 422 and batch.status_code == 422
    (one,) = single.json()["detail"]
    assert one["field"] == column and one["loc"] == ["body", column]
    (many,) = batch.json()["detail"]
    assert many["field"] == f"rows[5].{column}" and many["loc"] == ["body", "rows", 5, column]
    assert one["type"] == many["type"] == error and one["input"] == many["input"] == value
    assert api.prediction_lines() == []  # nothing priced, nothing logged


def test_a_float_column_takes_integers_and_an_integer_column_whole_floats(
    api: Api, trained: Trained, contract: Contract
) -> None:
    row = {**trained.rows[0], "historical_adr": 80, "lead_time": 12.0}

    response = api.client.post("/predict", json=row)

    assert response.status_code == 200
    reference = {**row, "historical_adr": 80.0, "lead_time": 12}
    np.testing.assert_allclose(response.json()["predictions"], expected(trained, contract, [reference]), atol=1e-9)


def test_a_body_that_is_not_json_is_422(api: Api) -> None:
    response = api.client.post("/predict", content=b'{"rows": [', headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_an_invalid_request_through_the_handler_keeps_fastapis_error_shape(api: Api, trained: Trained) -> None:
    response = api.handler("POST", "/predict", {"rows": [{**trained.rows[0], "adults": 99}]})

    assert response["statusCode"] == 422
    (error,) = json.loads(response["body"])["detail"]
    assert error["loc"] == ["body", "rows", 0, "adults"] and set(error) >= {"type", "loc", "msg", "input"}


# -- no model deployed ------------------------------------------------------------------------------------


def test_without_a_model_predict_is_503_no_model_deployed_yet(api_without_model: Api, trained: Trained) -> None:
    response = api_without_model.client.post("/predict", json=trained.rows[0])

    assert response.status_code == 503
    assert response.json()["detail"].startswith("no model deployed yet")


def test_without_a_model_health_is_503_and_says_why(api_without_model: Api) -> None:
    via_client = api_without_model.client.get("/health")
    via_handler = api_without_model.handler("GET", "/health")

    assert via_client.status_code == 503 and via_handler["statusCode"] == 503
    body = via_client.json()
    assert body["model_loaded"] is False and body["detail"].startswith("no model deployed yet")
    assert api_without_model.client.get("/model-info").status_code == 503


# -- health, model info, metrics, docs ----------------------------------------------------------------------


def test_health_names_the_loaded_model(api: Api) -> None:
    response = api.client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model_loaded": True,
        "model_name": "price-model",
        "model_version": "7",
        "function_version": "3",
    }


def test_model_info_describes_the_served_model(api: Api, trained: Trained, contract: Contract) -> None:
    info = api.client.get("/model-info").json()

    assert (info["model_name"], info["model_version"], info["alias"]) == ("price-model", "7", "champion")
    assert info["metrics"] == METADATA["metrics"] and info["data_window"] == METADATA["data_window"]
    assert info["features"] == list(trained.model.features) == list(contract.feature_columns)
    assert set(info["categorical_features"]) == set(contract.categorical_features)
    assert info["model_family"] == "lightgbm" and info["n_trees"] == trained.model.n_trees
    assert info["contract"] == {"name": contract.name, "version": contract.version}


def test_metrics_count_requests_by_route_and_status_and_rows_by_model_version(api: Api, trained: Trained) -> None:
    api.client.post("/predict", json=trained.rows[0])
    api.client.post("/predict", json={"rows": trained.rows[:4]})
    api.client.post("/predict", json={"rows": [{"booking_id": 1}]})
    api.client.get("/no-such-page")

    response = api.client.get("/metrics")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'pricepipe_http_requests_total{method="POST",route="/predict",status="200"} 2.0' in text
    assert 'pricepipe_http_requests_total{method="POST",route="/predict",status="422"} 1.0' in text
    assert 'pricepipe_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'pricepipe_predictions_total{model_name="price-model",model_version="7"} 5.0' in text
    assert 'pricepipe_http_request_duration_seconds_count{route="/predict"} 3.0' in text
    assert 'pricepipe_model_info{model_name="price-model",model_version="7"} 1.0' in text
    assert "process_resident_memory_bytes" in text


def test_the_openapi_document_shows_a_row_or_a_batch_from_the_contract(api: Api, contract: Contract) -> None:
    document = api.client.get("/openapi.json").json()

    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    refs = [option["$ref"].rsplit("/", 1)[1] for option in body["schema"]["oneOf"]]
    schemas = document["components"]["schemas"]
    row, batch = (schemas[name] for name in refs)
    assert list(row["properties"]) == list(contract.input_columns)
    assert row["additionalProperties"] is False and set(row["required"]) == set(contract.input_columns)
    assert row["properties"]["meal"]["enum"] == list(contract.columns["meal"].allowed or ())
    assert batch["properties"]["rows"]["items"]["$ref"].endswith(refs[0])
    assert set(body["examples"]) == {"one row", "batch"}
    assert {"413", "422", "503"} <= set(document["paths"]["/predict"]["post"]["responses"])
    assert api.client.get("/docs").status_code == 200


def test_the_openapi_document_names_every_response_model(api: Api) -> None:
    document = api.client.get("/openapi.json").json()

    responses = document["paths"]["/predict"]["post"]["responses"]
    schemas = document["components"]["schemas"]
    for status, model in (
        ("200", "PredictionResponse"),
        ("413", "ErrorResponse"),
        ("422", "ValidationErrorResponse"),
        ("503", "ErrorResponse"),
    ):
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}" and model in schemas
    assert schemas["ValidationErrorResponse"]["properties"]["detail"]["items"]["$ref"].endswith("/FieldError")
    assert "FieldError" in schemas


def test_prometheus_client_is_imported_only_when_metrics_are_read() -> None:
    code = (
        "import sys\n"
        "from pricepipe.serving.http_metrics import HttpMetrics\n"
        "m = HttpMetrics(); m.serving('m', '1'); m.observe('/predict', 'POST', 200, 0.0003); m.priced('m', '1', 3)\n"
        "before = 'prometheus_client' in sys.modules\n"
        "text = m.render().decode()\n"
        "print(before, 'prometheus_client' in sys.modules)\n"
        'print(\'pricepipe_http_request_duration_seconds_bucket{le="0.0005",route="/predict"} 1.0\' in text)\n'
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.split() == ["False", "True", "True"]


# -- the prediction log ----------------------------------------------------------------------------------


def test_each_request_writes_one_prediction_line_that_parses_back(api: Api, trained: Trained) -> None:
    rows = trained.rows[:3]

    body = api.client.post("/predict", json={"rows": rows}).json()

    (line,) = api.prediction_lines()
    assert line.message == catalog.PREDICTION_LOG_MARKER
    assert (line.request_id, line.model_name, line.model_version, line.function_version) == (
        body["request_id"],
        "price-model",
        "7",
        "3",
    )
    records = prediction_log.records_of(line)
    assert [r.record_key for r in records] == body["keys"]
    assert [r.prediction for r in records] == body["predictions"]
    assert records[0].features["lead_time"] == rows[0]["lead_time"]
    assert records[0].features["arrival_date"] == rows[0]["arrival_date"]
    assert "arrival_date_month" in records[0].features


def test_the_prediction_line_carries_the_requests_cloudwatch_metrics(api: Api, trained: Trained) -> None:
    api.handler("POST", "/predict", {"rows": trained.rows[:4]})

    (text,) = [t for t in api.log.getvalue().splitlines() if catalog.PREDICTION_LOG_MARKER in t]
    line = json.loads(text)
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["service", "model_version"]]
    assert {m["Name"] for m in directive["Metrics"]} == {"Predictions", "PredictLatency"}
    assert line["Predictions"] == 4 and line["PredictLatency"] > 0 and line["model_version"] == "7"


def _line_kwargs() -> dict[str, Any]:
    return {
        "request_id": "r1",
        "model_name": "price-model",
        "model_version": "7",
        "function_version": "3",
        "predicted_at_ms": 1_785_000_000_000,
        "keys": ["101", "102"],
        "predictions": np.array([120.5, 98.0]),
        "features": {
            "lead_time": np.array([3, 40]),
            "meal": ("bed_and_breakfast", "no_meal_package"),
            "arrival_date_is_weekend": np.array([True, False]),
            "arrival_date": [dt.date(2017, 8, 1), dt.date(2017, 8, 2)],
        },
        "size_hint": 200,
        "metrics": {"service": "pricepipe-api", "Predictions": 2, "PredictLatency": 0.4},
    }


@pytest.fixture
def powertools_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The Powertools logger set up as the API function sets it (orjson serializer), writing here."""
    formatter = logger.registered_formatter
    saved = formatter.json_serializer  # type: ignore[attr-defined]
    formatter.json_serializer = prediction_log.log_serializer  # type: ignore[attr-defined]
    buffer = io.StringIO()
    previous = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
    yield buffer
    logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
    formatter.json_serializer = saved  # type: ignore[attr-defined]


def test_the_line_writer_writes_the_line_powertools_writes(powertools_log: io.StringIO) -> None:
    """Same keys, same order, same values as logger.info(marker, extra=line) — timestamps and the
    location aside, and the asyncio task name Python 3.12 adds inside an event loop."""
    writer = prediction_log.LineWriter(logger)
    assert writer._target() is not None  # the direct path, not its logger.info fallback

    prediction_log.emit(logger, prediction_log.log_lines(**_line_kwargs()))
    assert writer.write(prediction_log.log_lines(**_line_kwargs(), as_lists=False)) == 1

    theirs, ours = (json.loads(text) for text in powertools_log.getvalue().splitlines())
    stamp = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}[+-]\d{4}")
    assert stamp.fullmatch(theirs.pop("timestamp")) and stamp.fullmatch(ours.pop("timestamp"))
    assert theirs.pop("location").startswith("emit:") and ours.pop("location").startswith("write:")
    theirs.pop("taskName", None)
    assert list(ours) == list(theirs) and ours == theirs
    assert ours["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert ours["features"]["arrival_date"] == ["2017-08-01", "2017-08-02"]


def test_a_filter_on_the_log_handler_still_applies_to_prediction_lines(powertools_log: io.StringIO) -> None:
    """Anything the direct path does not model (here a handler filter) goes through logger.info."""
    import logging

    class DropPredictions(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.getMessage() != catalog.PREDICTION_LOG_MARKER

    handler = logger.registered_handler
    handler.addFilter(drop := DropPredictions())
    try:
        writer = prediction_log.LineWriter(logger)
        assert writer._target() is None
        writer.write(prediction_log.log_lines(**_line_kwargs(), as_lists=False))
        logger.info("something else")
    finally:
        handler.removeFilter(drop)

    (line,) = [json.loads(text) for text in powertools_log.getvalue().splitlines()]
    assert line["message"] == "something else"


def test_a_large_request_is_logged_in_parts_that_together_hold_every_row() -> None:
    n = 3000
    lines = list(
        prediction_log.log_lines(
            request_id="r1",
            model_name="m",
            model_version="1",
            function_version="1",
            predicted_at_ms=1_700_000_000_000,
            keys=[str(i) for i in range(n)],
            predictions=np.arange(n, dtype=float),
            features={"x": np.arange(n), "city": ["lisbon"] * n},
            size_hint=3 * prediction_log.MAX_LINE_BYTES,
            metrics={"Predictions": n},
        )
    )

    assert len(lines) >= 3 and {line["parts"] for line in lines} == {len(lines)}
    assert [line.get("Predictions") for line in lines] == [n] + [None] * (len(lines) - 1)  # counted once
    parsed = [prediction_log.PredictionLogLine.model_validate({"message": "prediction_log", **line}) for line in lines]
    records = [record for line in parsed for record in prediction_log.records_of(line)]
    assert [r.record_key for r in records] == [str(i) for i in range(n)]
    assert all(len(json.dumps(line)) < prediction_log.MAX_LINE_BYTES for line in lines)


def test_the_packages_marker_is_the_one_the_subscription_filters_on() -> None:
    assert prediction_log.PREDICTION_LOG_MARKER == catalog.PREDICTION_LOG_MARKER


# -- request models and the column path -----------------------------------------------------------------------

SMALL_CONTRACT = """
name: rides
key: [city, ride_id]
target: price
event_time: day
columns:
  ride_id: {type: integer, min: 1}
  city: {type: category, allowed: [lisbon, porto]}
  day: {type: date}
  distance_km: {type: float, min: 0, max: 500}
  tip: {type: float, nullable: true}
  note: {type: string, max_length: 5, nullable: true}
  price: {type: float, min: 0}
"""


def test_row_models_follow_the_contract() -> None:
    models = request_models(parse_contract(SMALL_CONTRACT), max_batch_rows=10)
    schema = models.row.model_json_schema()

    assert set(schema["required"]) == {"ride_id", "city", "day", "distance_km"}  # nullable: optional
    assert schema["properties"]["city"]["enum"] == ["lisbon", "porto"]
    assert schema["properties"]["day"]["format"] == "date"
    assert schema["properties"]["distance_km"]["maximum"] == 500
    assert "price" not in schema["properties"]  # the target is what is predicted
    row = models.row.model_validate({"ride_id": 1, "city": "porto", "day": "2024-02-29", "distance_km": 3})
    assert row.tip is None and row.note is None  # type: ignore[attr-defined]
    assert models.row.model_validate(models.example)  # the documented example is valid


def test_the_column_path_gives_the_pydantic_models_values_or_declines() -> None:
    contract = parse_contract(SMALL_CONTRACT)
    models = request_models(contract, max_batch_rows=10)
    check = ColumnCheck(contract)
    rows: list[dict[str, Any]] = [
        {"ride_id": 1, "city": "porto", "day": "2024-02-29", "distance_km": 3, "tip": 1.5, "note": "hi"},
        {"ride_id": 2, "city": "lisbon", "day": "2024-03-01", "distance_km": 7.25},  # nullable left out
        {"ride_id": 3, "city": "lisbon", "day": "2024-03-01", "distance_km": 0, "tip": None, "note": None},
    ]

    columns = check.columns(rows)

    validated = [row.__dict__ for row in models.batch.model_validate({"rows": rows}).rows]  # type: ignore[attr-defined]
    assert columns is not None
    for name in contract.input_columns:
        assert list(np.asarray(columns[name], dtype=object)) == [r[name] for r in validated], name
    for bad in (
        {"ride_id": True},  # a bool among integers: the models refuse it (the stdlib array would not)
        {"distance_km": False},
        {"tip": True},  # in a nullable column too
        {"ride_id": 1.0},  # the models read it (and say so): not this path's to judge
        {"ride_id": 0},
        {"city": "faro"},
        {"day": "2024-02-30"},
        {"day": "20240301"},
        {"distance_km": 501},
        {"distance_km": "3"},
        {"note": "too long"},
        {"note": 5},
        {"extra": 1},
    ):
        assert check.columns([rows[0], {**rows[1], **bad}]) is None, bad
    assert check.columns([{k: v for k, v in rows[0].items() if k != "city"}]) is None  # a required one missing


def test_column_features_equal_feature_row_on_every_row(trained: Trained, contract: Contract) -> None:
    columns = ColumnCheck(contract).columns(trained.rows)
    assert columns is not None

    by_column = feature_columns(columns, contract)

    for index, row in enumerate(trained.rows):
        one = feature_row(row, contract)
        assert {name: np.asarray(by_column[name][index]).item() for name in one} == one


def test_the_serving_modules_import_nothing_heavy() -> None:
    # (Powertools imports botocore's package __init__, ~1 ms, to tag its user agent where botocore
    # exists, as in the Lambda runtime: not boto3 and no client, so botocore is not on this list)
    code = (
        "import sys\n"
        "import pricepipe.serving.service, pricepipe.serving.http_metrics, pricepipe.serving.model_layer\n"
        "import pricepipe.contract, pricepipe.features, pricepipe.lean_model, pricepipe.settings\n"
        "import pricepipe.observability\n"
        "heavy = {'pandas', 'pyarrow', 'boto3', 'psycopg', 'mlflow', 'sklearn', 'lightgbm', 'scipy', 'fastapi'}\n"
        "found = heavy & {m.split('.')[0] for m in sys.modules}\n"
        "found |= {'botocore.exceptions'} & set(sys.modules)  # 26 ms, and not in a bare serving env\n"
        "print(sorted(found))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_log_decoder_keeps_text_as_text_and_holds_on_to_nothing() -> None:
    """Powertools decodes every message it can; a plain message must fail cheaply, with a new error
    each time (re-raising one instance chained every traceback, and its log records, onto it)."""
    from pricepipe.serving.service import log_deserializer

    errors = []
    for _ in range(2):
        with pytest.raises(ValueError, match="not JSON") as caught:
            log_deserializer(catalog.PREDICTION_LOG_MARKER)
        errors.append(caught.value)

    assert errors[0] is not errors[1]
    assert log_deserializer('{"a": 1}') == {"a": 1}


# -- through API Gateway's stage URL; errors counted for canaries ---------------------------------------


def test_docs_through_the_stage_url_link_the_openapi_document_under_the_stage(api: Api) -> None:
    # GIVEN a browser on https://…/prod/docs (API Gateway strips the stage from `path`)
    docs = api.handler("GET", "/docs")
    openapi = json.loads(api.handler("GET", "/openapi.json")["body"])

    # THEN the page fetches /prod/openapi.json, and the document's server is the stage
    assert docs["statusCode"] == 200
    assert "'/prod/openapi.json'" in docs["body"]
    assert openapi["servers"] == [{"url": "/prod"}]


def test_docs_without_a_stage_prefix_link_the_openapi_document_at_the_root(api: Api) -> None:
    # GIVEN a custom domain (or the local gateway): the client's path has no stage in it
    event = api_gateway_event("GET", "/docs")
    event["requestContext"]["path"] = "/docs"

    docs = api.module.handler(event, LambdaContext())

    assert "'/openapi.json'" in docs["body"]


def test_the_docs_page_loads_everything_from_the_api_under_the_stage_and_nothing_from_elsewhere(
    api_without_model: Api,
) -> None:
    # GIVEN a browser with no internet access on https://…/prod/docs
    page = api_without_model.handler("GET", "/docs")

    # THEN every file the page names is the API's own, below the stage; no other host is named
    html = page["body"]
    assert page["statusCode"] == 200 and page["headers"]["content-type"].startswith("text/html")
    referenced = re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url: '([^']*)'", html)
    assert sorted(referenced) == sorted(
        ["/prod/docs/swagger-ui-bundle.js", "/prod/docs/swagger-ui.css", "data:,", "/prod/openapi.json"]
    )
    assert re.search(r"(https?:)?//", html) is None, "no absolute or scheme-relative URL"
    assert '"validatorUrl": null' in html  # Swagger UI's online validator stays off


def test_swagger_uis_files_answer_with_their_content_types_through_the_handler(api_without_model: Api) -> None:
    from pricepipe.serving import docs

    for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        answer = api_without_model.handler("GET", f"/docs/{name}")

        assert answer["statusCode"] == 200 and answer["headers"]["content-type"].startswith(kind)
        assert answer["isBase64Encoded"] is False  # text: API Gateway passes it on without binary media types
        assert answer["body"].encode() == (docs.ASSET_DIR / name).read_bytes()
    assert b"SwaggerUIBundle" in docs.asset("swagger-ui-bundle.js")
    assert api_without_model.handler("GET", "/docs/oauth2-redirect")["statusCode"] == 200
    assert api_without_model.handler("GET", "/docs/index.html")["statusCode"] == 404  # only the files it names


def test_a_missing_swagger_ui_file_is_a_503_naming_the_build_step(
    api_without_model: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pricepipe.serving import docs

    monkeypatch.setattr(docs, "ASSET_DIR", tmp_path)
    docs.asset.cache_clear()
    try:
        answer = api_without_model.handler("GET", "/docs/swagger-ui.css")
    finally:
        docs.asset.cache_clear()

    assert answer["statusCode"] == 503
    assert "make node_modules/.installed" in json.loads(answer["body"])["detail"]


def test_a_5xx_answer_is_counted_as_a_server_error_of_this_function_version(
    load_api: Callable[[Path | None], Api], trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a container with no model (every /predict is a 503)
    api = load_api(None)

    bad = api.handler("POST", "/predict", trained.rows[0])
    good = api.handler("GET", "/openapi.json")

    # THEN one ServerErrors EMF line, for the 503 alone, by function name and version
    assert (bad["statusCode"], good["statusCode"]) == (503, 200)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"ServerErrors"' in line]
    assert len(emf) == 1
    directive = emf[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Metrics"] == [{"Name": "ServerErrors", "Unit": "Count"}]
    assert directive["Dimensions"] == [["service", "function_version"]]
    assert emf[0]["ServerErrors"] == 1 and emf[0]["function_version"] == "3"


# -- explanations (?explain=true) ------------------------------------------------------------------------


def assert_explains(body: dict[str, Any], trained: Trained, rows: int) -> None:
    """Per row, every model feature's contribution, adding up from base_value to the prediction."""
    contributions = body["contributions"]
    assert len(contributions) == len(body["predictions"]) == rows
    assert all(list(c) == list(trained.model.features) for c in contributions)
    assert body["contribution_scale"] == "price"
    outputs = [body["base_value"] + sum(c.values()) for c in contributions]
    np.testing.assert_allclose(outputs, body["predictions"], rtol=0, atol=1e-6)


def test_explain_true_answers_each_rows_contributions_beside_its_price(
    api: Api, trained: Trained, contract: Contract
) -> None:
    row, rows = trained.rows[0], trained.rows[:MAX_ROWS]

    single = api.client.post("/predict?explain=true", json=row)
    batch = api.client.post("/predict?explain=true", json={"rows": rows})

    assert single.status_code == batch.status_code == 200
    assert_explains(single.json(), trained, 1)
    assert_explains(batch.json(), trained, len(rows))
    np.testing.assert_allclose(batch.json()["predictions"], expected(trained, contract, rows), rtol=0, atol=1e-9)
    features = [feature_row(r, contract) for r in rows]
    np.testing.assert_allclose(
        [list(c.values()) for c in batch.json()["contributions"]],
        trained.model.explain_rows(features).contributions,
        rtol=0,
        atol=1e-9,
    )


def test_the_lambda_handler_explains_one_row_and_a_batch(api: Api, trained: Trained) -> None:
    rows = trained.rows[:10]
    answers = []
    for body in (rows[0], {"rows": rows}):
        event = api_gateway_event("POST", "/predict", body)
        event["queryStringParameters"] = {"explain": "true"}
        event["multiValueQueryStringParameters"] = {"explain": ["true"]}
        answers.append(api.module.handler(event, LambdaContext()))

    assert [a["statusCode"] for a in answers] == [200, 200]
    assert_explains(json.loads(answers[0]["body"]), trained, 1)
    assert_explains(json.loads(answers[1]["body"]), trained, 10)
    assert len(api.prediction_lines()) == 2  # logged as any request is


def test_without_explain_or_with_explain_false_the_answer_is_todays(api: Api, trained: Trained) -> None:
    for body in (trained.rows[0], {"rows": trained.rows[:5]}):
        answers = [
            api.client.post(path, json=body).json()
            for path in ("/predict", "/predict?explain=false", "/predict?explain=0")
        ]
        for answer in answers:
            assert list(answer) == ["request_id", "model_name", "model_version", "keys", "predictions"]
        assert answers[0]["predictions"] == answers[1]["predictions"] == answers[2]["predictions"]
        assert answers[0]["keys"] == answers[1]["keys"] == answers[2]["keys"]


def test_a_bad_explain_value_is_a_422_naming_the_parameter(api: Api, trained: Trained) -> None:
    response = api.client.post("/predict?explain=maybe", json=trained.rows[0])

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "explain"] and error["field"] == "explain"
    assert error["type"] == "bool_parsing" and error["input"] == "maybe"
    assert api.prediction_lines() == []


def test_a_model_without_node_covers_predicts_but_answers_explain_with_409(
    load_api: Callable[[Path | None], Api], trained: Trained, tmp_path: Path
) -> None:
    """An artifact exported before covers were recorded (format version 1) still serves prices;
    asking it for explanations is a 409 that says why, not a 5xx that would count against the version."""
    import dataclasses

    old = LeanModel(dataclasses.replace(trained.model.trees, cover=None), trained.model.encoding, trained.model.info)
    zipfile.ZipFile(io.BytesIO(build_layer_zip(old.to_bytes(), METADATA))).extractall(tmp_path)
    api = load_api(tmp_path)

    priced = api.client.post("/predict", json=trained.rows[0])
    refused = api.client.post("/predict?explain=true", json=trained.rows[0])

    assert priced.status_code == 200
    assert refused.status_code == 409
    assert "cannot explain its predictions: its artifact has no node covers" in refused.json()["detail"]
    assert api.client.get("/model-info").json()["explainable"] is False


def test_the_openapi_document_shows_the_explain_parameter_and_its_fields(api: Api) -> None:
    document = api.client.get("/openapi.json").json()

    post = document["paths"]["/predict"]["post"]
    parameter = post["parameters"][0]
    assert (parameter["name"], parameter["in"], parameter["schema"]["type"]) == ("explain", "query", "boolean")
    assert post["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    fields = document["components"]["schemas"]["PredictionResponse"]["properties"]
    assert {"contributions", "base_value", "contribution_scale"} <= set(fields)
    assert api.client.get("/model-info").json()["explainable"] is True


# -- prediction intervals (?interval=0.8) -------------------------------------------------------------


@pytest.fixture(scope="module")
def with_intervals(
    trained: Trained, hotel_rates: pd.DataFrame, contract: Contract, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """The trained model with an interval section: σ fitted on the model's errors on 1,000 later
    bookings, scores from 1,000 more (what training does, on fewer rows)."""
    from pricepipe.lean_interval import ConformalInterval
    from pricepipe.training.intervals import fit_sigma

    raw = hotel_rates.dropna(subset=["country"]).iloc[5000:7000]
    features = build_features(raw.assign(arrival_date=pd.to_datetime(raw["arrival_date"])), contract)
    model = trained.model
    x, y = encode(features, model.encoding), features[contract.target].to_numpy(dtype=float)
    errors = np.abs(y - model.predict_matrix(x))
    categorical = [model.encoding.index[name] for name in contract.categorical_features]
    sigma = fit_sigma(x[:1000], errors[:1000], model.encoding, categorical, seed=1)
    floor = 0.05 * float(np.mean(errors[:1000]))
    scores = errors[1000:] / np.maximum(sigma.predict_matrix(x[1000:]), floor)
    info = {"holdout_coverage": {"0.5": 0.51, "0.8": 0.79}, "holdout_mean_width": {"0.8": 60.0}, "holdout_rows": 900}
    lean = model.with_interval(ConformalInterval(sigma, scores, floor, info))
    layer = tmp_path_factory.mktemp("model-layer-intervals")
    zipfile.ZipFile(io.BytesIO(build_layer_zip(lean.to_bytes(), METADATA))).extractall(layer)
    return Trained(lean, layer, trained.rows)


@pytest.fixture
def interval_api(load_api: Callable[[Path | None], Api], with_intervals: Trained) -> Api:
    return load_api(with_intervals.layer)


def assert_intervals(body: dict[str, Any], trained: Trained, contract: Contract, rows: list[dict[str, Any]]) -> None:
    """Each row's [low, high] holds its price and is the artifact's own interval at 0.8."""
    intervals = np.array(body["intervals"], dtype=float)
    predictions = np.array(body["predictions"])
    assert intervals.shape == (len(rows), 2) and body["interval_level"] == 0.8
    assert np.all(intervals[:, 0] < predictions) and np.all(predictions < intervals[:, 1])
    features = [feature_row(row, contract) for row in rows]
    own = trained.model.intervals_rows(features, trained.model.predict_rows(features), 0.8)
    np.testing.assert_allclose(intervals, own, rtol=0, atol=1e-9)


def test_interval_answers_each_rows_interval_beside_its_price(
    interval_api: Api, with_intervals: Trained, contract: Contract
) -> None:
    rows = with_intervals.rows[:MAX_ROWS]

    single = interval_api.client.post("/predict?interval=0.8", json=rows[0])
    batch = interval_api.client.post("/predict?interval=0.8", json={"rows": rows})

    assert single.status_code == batch.status_code == 200
    assert_intervals(single.json(), with_intervals, contract, rows[:1])
    assert_intervals(batch.json(), with_intervals, contract, rows)
    np.testing.assert_allclose(batch.json()["predictions"], expected(with_intervals, contract, rows), atol=1e-9)
    widths = np.diff(np.array(batch.json()["intervals"]), axis=1).ravel()
    assert np.std(widths) > 0.1 * np.mean(widths)  # each row its own width
    wider = np.diff(np.array(interval_api.client.post("/predict?interval=0.95", json=rows[0]).json()["intervals"]))
    assert wider[0, 0] > np.diff(np.array(single.json()["intervals"]))[0, 0]


def test_interval_and_explain_together_and_through_the_lambda_handler(
    interval_api: Api, with_intervals: Trained, contract: Contract
) -> None:
    rows = with_intervals.rows[:10]
    both = interval_api.client.post("/predict?explain=true&interval=0.8", json={"rows": rows})
    event = api_gateway_event("POST", "/predict", rows[0])
    event["queryStringParameters"] = {"interval": "0.8"}
    event["multiValueQueryStringParameters"] = {"interval": ["0.8"]}
    answer = interval_api.module.handler(event, LambdaContext())

    assert both.status_code == 200 and answer["statusCode"] == 200
    assert_intervals(both.json(), with_intervals, contract, rows)
    assert_explains(both.json(), with_intervals, len(rows))
    assert_intervals(json.loads(answer["body"]), with_intervals, contract, rows[:1])
    assert len(interval_api.prediction_lines()) == 2


def test_without_interval_the_answer_of_a_model_with_intervals_is_todays(
    interval_api: Api, with_intervals: Trained
) -> None:
    for body in (with_intervals.rows[0], {"rows": with_intervals.rows[:5]}):
        answer = interval_api.client.post("/predict", json=body).json()
        assert list(answer) == ["request_id", "model_name", "model_version", "keys", "predictions"]


def test_a_level_beyond_the_calibration_rows_is_unbounded(interval_api: Api, with_intervals: Trained) -> None:
    response = interval_api.client.post("/predict?interval=0.99999", json=with_intervals.rows[0])

    assert response.status_code == 200
    assert response.json()["intervals"] == [[None, None]]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("abc", "float_parsing"),
        ("", "float_parsing"),
        ("0", "greater_than"),
        ("-0.2", "greater_than"),
        ("1", "less_than"),
        ("80", "less_than"),
        ("nan", "finite_number"),
        ("inf", "finite_number"),
    ],
)
def test_a_bad_interval_level_is_a_422_naming_the_parameter(
    interval_api: Api, with_intervals: Trained, value: str, kind: str
) -> None:
    response = interval_api.client.post(f"/predict?interval={value}", json=with_intervals.rows[0])

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "interval"] and error["field"] == "interval"
    assert error["type"] == kind and error["input"] == value
    assert interval_api.prediction_lines() == []


def test_a_model_without_intervals_predicts_but_answers_interval_with_409(api: Api, trained: Trained) -> None:
    """An artifact of format version 2 (or 1): no error model, no calibration scores."""
    priced = api.client.post("/predict", json={"rows": trained.rows[:3]})
    refused = api.client.post("/predict?interval=0.8", json={"rows": trained.rows[:3]})

    assert priced.status_code == 200
    assert refused.status_code == 409
    assert "cannot answer prediction intervals: its artifact has no interval section" in refused.json()["detail"]
    assert api.client.get("/model-info").json()["intervals"] == {"available": False}


def test_model_info_and_the_openapi_document_describe_intervals(interval_api: Api, with_intervals: Trained) -> None:
    info = interval_api.client.get("/model-info").json()["intervals"]
    document = interval_api.client.get("/openapi.json").json()

    assert info["available"] is True and info["holdout_coverage"]["0.8"] == 0.79
    assert info["calibration_rows"] == 1000 and "conformal" in info["method"]
    parameters = {p["name"]: p for p in document["paths"]["/predict"]["post"]["parameters"]}
    assert parameters["interval"]["schema"] == {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
    fields = document["components"]["schemas"]["PredictionResponse"]["properties"]
    assert {"intervals", "interval_level"} <= set(fields)
