"""The prediction API: FastAPI in Lambda through Mangum, or any ASGI server (uvicorn) as it is.

``POST /predict`` prices one row (a JSON object of the contract's input columns) or a batch
(``{"rows": [...]}``, at most ``PRICEPIPE_MAX_BATCH_ROWS``); ``GET /health``, ``GET /model-info`` and
``GET /metrics`` (Prometheus text) describe the process. Everything heavy happens once per container,
here at import (Lambda's init phase): settings, the contract and its request models, and the model,
which arrives as the function version's model layer (:mod:`pricepipe.serving.model_layer`). A
version without one answers 503 and says so.

``POST /predict?explain=true`` also answers each row's per-feature contributions (TreeSHAP),
``base_value`` and ``contribution_scale``; a model whose artifact cannot explain (exported before
node covers were recorded) answers 409, the request being fine and the model not one that can.
``POST /predict?interval=0.8`` (any level strictly between 0 and 1) also answers each row's
prediction interval, ``intervals: [[low, high], ...]``, from the error model and calibration scores
exported with the model; a model exported without them answers 409 the same way. Both parameters
can be given together; a bad value of either is a 422 located at ``["query", name]``.

The body is read raw and validated by :class:`pricepipe.serving.service.PredictionService` rather
than by FastAPI's own body parameter: that lets a 1,000-row batch be checked a column at a time
(the row model validates single rows and reports every error) and keeps DESIGN §5's 10 ms budget.
The OpenAPI document still shows the body as the contract's row model *or* batch model.

Metrics: CloudWatch EMF, rows priced and latency by model version, inside each request's prediction
log line (:class:`pricepipe.serving.prediction_log.EmfMetrics` says why), and cold starts through
Powertools; as a server, also ``/metrics`` (Prometheus text).

Cold start (DESIGN §5: 0.6 s to the first answer) is mostly importing FastAPI, pydantic and numpy,
which the issue requires; the rest is kept off the init path: no response models on the routes
(FastAPI builds a serializer for each and imports ``pydantic.v1`` to vet them, ~35 ms here — the
responses are encoded by the service, and the OpenAPI document names the models all the same), the
OpenAPI schemas are built when ``/openapi.json`` is first read, and prometheus_client is imported
when ``/metrics`` is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from mangum import Mangum

from pricepipe.contract import Contract, load_contract
from pricepipe.observability import logger, metrics
from pricepipe.serving import docs
from pricepipe.serving.http_metrics import HttpMetrics, MetricsMiddleware
from pricepipe.serving.model_layer import load_deployed_model
from pricepipe.serving.prediction_log import EmfMetrics, ServerErrorMetric, log_serializer
from pricepipe.serving.requests import REF_TEMPLATE, ErrorResponse, PredictionResponse, ValidationErrorResponse
from pricepipe.serving.service import (
    NO_MODEL,
    BatchTooLarge,
    InvalidRequest,
    ModelCannotAnswer,
    NoModelDeployed,
    PredictionService,
    log_deserializer,
)
from pricepipe.serving.snapshot import register_restore_hooks
from pricepipe.settings import Settings, get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


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
    return os.urandom(16).hex()  # as random as uuid4().hex, without importing uuid at cold start


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # what FastAPI's own bool parameters accept
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
EXPLAIN_PARAMETER = {
    "name": "explain",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": (
        "Also answer each row's per-feature contributions (TreeSHAP), `base_value` and"
        " `contribution_scale`: per row, base_value plus the contributions is the model's output"
    ),
}


INTERVAL_PARAMETER = {
    "name": "interval",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "description": (
        "Also answer each row's prediction interval at this level, `intervals: [[low, high], ...]`"
        " (0.8: the price falls inside for about 80% of rows; the holdout coverage is in /model-info)."
        " An end is null when the level is beyond what the model's calibration rows can bound"
    ),
}


def _query_error(name: str, kind: str, msg: str, value: str, **ctx: Any) -> RequestValidationError:
    error: dict[str, Any] = {"type": kind, "loc": ("query", name), "msg": msg, "input": value, "field": name}
    if ctx:
        error["ctx"] = ctx
    return RequestValidationError([error])


def query_options(request: Request) -> tuple[bool, float | None]:
    """``(explain, interval)`` from the query string, read by hand rather than as FastAPI parameters:
    a request without a query string pays one test, not a parameter's validation. A bad value is
    FastAPI's 422, located and typed as pydantic types it (the first bad parameter)."""
    if not request.scope.get("query_string"):
        return False, None
    params = request.query_params
    explain = params.get("explain")
    if explain is not None and explain.lower() not in _FALSE and explain.lower() not in _TRUE:
        msg = "Input should be a valid boolean, unable to interpret input"
        raise _query_error("explain", "bool_parsing", msg, explain)
    return explain is not None and explain.lower() in _TRUE, interval_level(params.get("interval"))


def interval_level(value: str | None) -> float | None:
    """``?interval=``'s level: a finite number strictly between 0 and 1 (None: not asked for)."""
    if value is None:
        return None
    try:
        level = float(value)
    except ValueError:
        msg = "Input should be a valid number, unable to parse string as a number"
        raise _query_error("interval", "float_parsing", msg, value) from None
    if not math.isfinite(level):
        raise _query_error("interval", "finite_number", "Input should be a finite number", value)
    if not level > 0:
        raise _query_error("interval", "greater_than", "Input should be greater than 0", value, gt=0)
    if not level < 1:
        raise _query_error("interval", "less_than", "Input should be less than 1", value, lt=1)
    return level


def _json_response(model: str, description: str) -> dict[str, Any]:
    """An OpenAPI response whose JSON body is the named component schema (added in ``openapi()``)."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=model)}}},
    }


def create_app(service: PredictionService, http_metrics: HttpMetrics) -> FastAPI:  # noqa: C901 - the app's routes are declared in one factory, as FastAPI apps are
    """The ASGI app over a prepared service."""
    app = FastAPI(
        # no OpenTelemetry: traces come from API Gateway and Lambda, and the check costs every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="Price prediction API",
        version="1",
        # /docs is served below with Swagger UI's files from this package (pricepipe.serving.docs),
        # not FastAPI's page, whose browser fetches them from a CDN; no ReDoc page (a CDN too)
        docs_url=None,
        redoc_url=None,
        description=(
            f"Prices {service.contract.name} records with the deployed model. `POST /predict` takes one row "
            f'or `{{"rows": [...]}}` with at most {service.max_batch_rows} rows.'
        ),
    )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    if service.ready:
        http_metrics.serving(service.model_name, service.model_version)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own shape, {"detail": [{type, loc, msg, input, ...}]}, plus "field": "rows[3].lead_time"
        return JSONResponse(jsonable_encoder({"detail": exc.errors()}), status_code=422)

    @app.post(
        "/predict",
        summary="Price one row or a batch of rows",
        # declared as schemas, not response models (see the module docstring)
        responses={
            200: _json_response(PredictionResponse.__name__, "The predicted prices"),
            409: _json_response(
                ErrorResponse.__name__,
                "explain=true or interval=..., and the served model's artifact cannot answer it",
            ),
            413: _json_response(ErrorResponse.__name__, f"More than {service.max_batch_rows} rows"),
            422: _json_response(ValidationErrorResponse.__name__, "Invalid input: every bad field, located"),
            503: _json_response(ErrorResponse.__name__, "No model deployed yet"),
        },
    )
    async def predict(request: Request) -> Response:
        if not service.ready:
            return JSONResponse({"detail": NO_MODEL}, status_code=503)
        request_id = _request_id(request.scope)
        explain, interval = query_options(request)
        try:
            result = service.predict(await request.body(), request_id, explain=explain, interval=interval)
        except InvalidRequest as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors]) from None
        except BatchTooLarge as exc:
            return JSONResponse({"detail": str(exc)}, status_code=413)
        except ModelCannotAnswer as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
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
        return Response(http_metrics.render(), media_type=http_metrics.content_type)

    @app.get(docs.DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # below the request's root path (the stage prefix behind API Gateway: see _staged), as
        # FastAPI's own page names the document
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + docs.OPENAPI_PATH,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{docs.DOCS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{docs.DOCS_PATH}/swagger-ui.css",
            swagger_favicon_url=docs.FAVICON,
            oauth2_redirect_url=root + docs.OAUTH2_REDIRECT_PATH,
            # no online validator badge (Swagger UI would call validator.swagger.io)
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(docs.OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(docs.DOCS_PATH + "/{name}", include_in_schema=False)
    async def swagger_ui_asset(name: str) -> Response:
        if name not in docs.ASSETS:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        try:
            body = docs.asset(name)
        except docs.AssetMissing as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        # the pinned version's files never change under a name while this function version runs
        return Response(body, media_type=docs.ASSETS[name], headers={"cache-control": "public, max-age=86400"})

    def openapi() -> dict[str, Any]:
        # the request body and the responses are declared by hand (see the module docstring): add
        # them and the models they refer to, once, when the document is first asked for
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            body_schema, body_components = service.models.body_schemas()
            components.update(body_components)
            for model in (PredictionResponse, ErrorResponse, ValidationErrorResponse):
                model_schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            example = service.models.example
            schema["paths"]["/predict"]["post"]["parameters"] = [EXPLAIN_PARAMETER, INTERVAL_PARAMETER]
            schema["paths"]["/predict"]["post"]["requestBody"] = {
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
register_restore_hooks()  # under SnapStart this init is snapshotted: pricepipe.serving.snapshot says what was checked


def stage_root_path(event: Mapping[str, Any]) -> str:
    """``/<stage>`` when the client reached the API through its stage URL (``…/v1/predict``), else
    ``""`` (a custom domain, the local gateway at the root). API Gateway gives the route without the
    stage (``path``) and the path the client asked for (``requestContext.path``): the stage is a
    prefix exactly when the second is the first behind it. FastAPI builds ``/docs``' link to
    ``/openapi.json`` and the document's server URL from this root path."""
    context = event.get("requestContext") or {}
    stage = context.get("stage")
    if stage and context.get("path") == f"/{stage}{event.get('path', '')}":
        return f"/{stage}"
    return ""


async def _staged(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    root = stage_root_path(scope.get("aws.event") or {})
    if root:
        scope["root_path"] = root
    await app(scope, receive, send)


_lambda_adapter = Mangum(_staged, lifespan="off")  # the lifespan would otherwise run on every invocation
_server_errors = ServerErrorMetric(
    settings.metrics_namespace,
    function=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", settings.service_name),
    function_version=os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
)


def _invoke(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = _lambda_adapter(event, cast(Any, context))  # Powertools' and Mangum's context types differ
    if response.get("statusCode", 200) >= 500:
        # counted by version, so a canary's health check sees the errors FastAPI answered for it
        _server_errors.emit()
    return response


# Powertools emits the cold-start metric from the first invocation. Its decorator also flushes (and,
# with no metric added, warns) on every invocation after that, ~25 µs of a 0.5 ms budget: so only the
# first invocation goes through it, and later ones flush only when a metric was added (none is: a
# request's metrics travel in its prediction log line).
_first_invocation = metrics.log_metrics(capture_cold_start_metric=True)(_invoke)
_cold = True


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    global _cold
    if _cold:
        _cold = False
        return _first_invocation(event, context)
    try:
        return _invoke(event, context)
    finally:
        if metrics.metric_set:
            metrics.flush_metrics()
