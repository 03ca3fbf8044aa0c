"""What the probes share: the API Gateway event, the bare FastAPI app, latency percentiles, RSS.

Standard library only at module level: it is imported inside the cold starts being measured.
No ``from __future__ import annotations``: FastAPI reads the route's annotations at run time.
"""

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI


def api_event(body: Any, query: "dict[str, str] | None" = None) -> dict[str, Any]:
    """An API Gateway (REST, v1 proxy) event POSTing ``body`` as JSON to ``/predict`` (``?query``)."""
    return {
        "resource": "/{proxy+}",
        "path": "/predict",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": "predict"},
        "stageVariables": None,
        "requestContext": {
            "requestId": "bench",
            "stage": "prod",
            "httpMethod": "POST",
            "resourcePath": "/{proxy+}",
            "path": "/prod/predict",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def bare_app() -> "FastAPI":
    """A bare FastAPI app whose ``POST /predict`` reads the body and answers a constant: the floor
    the issue's stack sets (DESIGN's anchor: 176 us through Mangum)."""
    from fastapi import FastAPI, Request, Response

    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await request.body()
        return Response(b'{"predictions": [1.0]}', media_type="application/json")

    return app


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds of the timings ``seconds``, and how many there were."""
    xs = sorted(seconds)
    return {"p50_ms": xs[len(xs) // 2] * 1e3, "p99_ms": xs[int(len(xs) * 0.99) - 1] * 1e3, "n": len(xs)}


def resident_mb() -> float:
    """This process's resident memory now (VmRSS), MB: what a warm server holds, not its peak."""
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024
