"""The prediction API: FastAPI in Lambda through Mangum, or any ASGI server (uvicorn) as it is.

``POST /predict`` prices one row (a JSON object of the contract's input columns) or a batch
(``{"rows": [...]}``, at most ``PRICEPIPE_MAX_BATCH_ROWS``); ``GET /health``, ``GET /model-info`` and
``GET /metrics`` (Prometheus text) describe the process. Everything heavy happens once per container,
here at import (Lambda's init phase): settings, the contract and its request models, and the model,
which arrives as the function version's model layer (:mod:`pricepipe.serving.model_layer`). A
version without one answers 503 and says so.

The body is read raw and validated by :class:`pricepipe.serving.service.PredictionService` rather
than by FastAPI's own body parameter: that lets a 1,000-row batch be checked a column at a time
(the row model validates single rows and reports every error) and keeps DESIGN §5's 10 ms budget.
The OpenAPI document still shows the body as the contract's row model *or* batch model.

Metrics: CloudWatch EMF, rows priced and latency by model version, inside each request's prediction
log line (:class:`pricepipe.serving.prediction_log.EmfMetrics` says why), and cold starts through
Powertools; as a server, also ``/metrics`` (Prometheus text).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import MutableMapping
from typing import Any, cast

from aws_lambda_powertools.utilities.typing import LambdaContext
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from mangum import Mangum

from pricepipe.contract import Contract, load_contract
from pricepipe.observability import logger, metrics
from pricepipe.serving.http_metrics import CONTENT_TYPE, HttpMetrics, MetricsMiddleware
from pricepipe.serving.model_layer import load_deployed_model
from pricepipe.serving.prediction_log import EmfMetrics
from pricepipe.serving.requests import ErrorResponse, PredictionResponse, ValidationErrorResponse
from pricepipe.serving.service import (
    NO_MODEL,
    BatchTooLarge,
    InvalidRequest,
    NoModelDeployed,
    PredictionService,
    log_deserializer,
    log_serializer,
)
from pricepipe.settings import Settings, get_settings


def _contract(settings: Settings) -> Contract:
    if settings.contract.startswith("s3://"):
        import boto3  # only for a contract kept in S3: the Lambda runtime has it, the layer does not

        return load_contract(settings.contract, boto3.client("s3", region_name=settings.region))
    return load_contract(settings.contract)


def _request_id(scope: MutableMapping[str, Any]) -> str:
    """API Gateway's request id (in its access logs too), else Lambda's, else a new one (a server)."""
    event = scope.get("aws.event")
    if isinstance(event, dict):
        request_id = (event.get("requestContext") or {}).get("requestId")
        if request_id:
            return str(request_id)
    context = scope.get("aws.context")
    if context is not None and getattr(context, "aws_request_id", None):
        return str(context.aws_request_id)
    return uuid.uuid4().hex


def create_app(service: PredictionService, http_metrics: HttpMetrics) -> FastAPI:
    """The ASGI app over a prepared service."""
    app = FastAPI(
        # no OpenTelemetry: traces come from API Gateway and Lambda, and the check costs every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="Price prediction API",
        version="1",
        description=(
            f"Prices {service.contract.name} records with the deployed model. `POST /predict` takes one row "
            f'or `{{"rows": [...]}}` with at most {service.max_batch_rows} rows.'
        ),
    )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    if service.ready:
        http_metrics.serving(service.model_name, service.model_version)
    body_schema, components = service.models.body_schemas()
    example = service.models.example

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own shape, {"detail": [{type, loc, msg, input, ...}]}, plus "field": "rows[3].lead_time"
        return JSONResponse(jsonable_encoder({"detail": exc.errors()}), status_code=422)

    @app.post(
        "/predict",
        summary="Price one row or a batch of rows",
        response_model=PredictionResponse,
        responses={
            413: {"model": ErrorResponse, "description": f"More than {service.max_batch_rows} rows"},
            422: {"model": ValidationErrorResponse, "description": "Invalid input: every bad field, located"},
            503: {"model": ErrorResponse, "description": "No model deployed yet"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": body_schema,
                        "examples": {
                            "one row": {"summary": "One row", "value": example},
                            "batch": {"summary": "A batch", "value": {"rows": [example]}},
                        },
                    }
                },
            }
        },
    )
    async def predict(request: Request) -> Response:
        if not service.ready:
            return JSONResponse({"detail": NO_MODEL}, status_code=503)
        request_id = _request_id(request.scope)
        try:
            result = service.predict(await request.body(), request_id)
        except InvalidRequest as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors]) from None
        except BatchTooLarge as exc:
            return JSONResponse({"detail": str(exc)}, status_code=413)
        http_metrics.priced(result.model_name, result.model_version, result.rows)
        return Response(
            result.to_json(),
            media_type="application/json",
            headers={"x-request-id": request_id, "x-model-version": result.model_version},
        )

    @app.get("/health", summary="Is a model loaded, and which")
    async def health() -> Response:
        return JSONResponse(service.health(), status_code=200 if service.ready else 503)

    @app.get("/model-info", summary="The served model: version, alias, training metrics, data window, features")
    async def model_info() -> Response:
        try:
            return JSONResponse(service.model_info())
        except NoModelDeployed as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics of this process", response_class=Response)
    async def prometheus() -> Response:
        return Response(http_metrics.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        # the request body is declared by hand (see the module docstring): add the models it refers to
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


settings = get_settings()
# This function's log lines, the 1,000-row prediction lines above all, are encoded by orjson; and
# Powertools tries to JSON-decode every message, which json does through a raised error (~10 µs).
logger.registered_formatter.json_serializer = log_serializer  # type: ignore[attr-defined]
logger.registered_formatter.json_deserializer = log_deserializer  # type: ignore[attr-defined]
service = PredictionService(
    _contract(settings),
    load_deployed_model(),
    max_batch_rows=settings.max_batch_rows,
    function_version=os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    logger=logger,
    metrics=EmfMetrics(settings.metrics_namespace, settings.service_name),
)
http_metrics = HttpMetrics()
app = create_app(service, http_metrics)
_lambda_adapter = Mangum(app, lifespan="off")  # the lifespan would otherwise run on every invocation


@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _lambda_adapter(event, cast(Any, context))  # Powertools' and Mangum's context types differ, not the object
