"""Probe: the API function's Lambda handler answering API Gateway events in a fresh process.

    python handler.py FUNCTION_DIR MODEL_DIR ROWS_FILE cold|warm

Prints when the first answer came (``answered_at``, wall clock: the spawning benchmark's cold start)
and, with ``warm``, one-row and 1,000-row latencies, each beside references measured in the same
process and the same moments, and the resident memory after them; and the same requests with
``?interval=0.8`` and with ``?explain=true`` (what each costs is the difference to the plain request).
"""

import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.probes import _shared
else:
    import _shared  # run by path: this folder leads sys.path

BEGAN = time.perf_counter()


class Context:
    """The Lambda context the handler reads (Powertools names the function with it)."""

    function_name = "pricepipe-api"
    function_version = "1"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:pricepipe-api:live"
    aws_request_id = "bench"
    log_group_name = "/aws/lambda/pricepipe-api"
    log_stream_name = "bench"


def main() -> None:
    function_dir, model_dir, rows_file, mode = sys.argv[1:5]
    sys.path[:0] = [function_dir, model_dir]
    app: Any = importlib.import_module("app")  # functions/api/app.py, as the runtime imports a handler
    with open(rows_file) as handle:
        rows = json.load(handle)
    sink = open(os.devnull, "w")  # noqa: SIM115 - open for the process's life, as the runtime's log pipe
    app.logger.registered_handler.setStream(sink)  # the prediction log: a pipe to the runtime in Lambda
    real_stdout, sys.stdout = sys.stdout, sink  # Powertools prints the cold-start metric
    answer = app.handler(_shared.api_event(rows[0]), Context())
    first_s, answered_at = time.perf_counter() - BEGAN, time.time()
    assert answer["statusCode"] == 200, answer
    out: dict[str, Any] = {"first_answer_in_process_s": first_s, "answered_at": answered_at}
    if mode == "warm":
        out.update(warm(app, rows))
    sys.stdout = real_stdout
    print(json.dumps(out))


def warm(app: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Latencies through the handler, each beside references measured interleaved with it: a bare
    FastAPI app through Mangum with the same bodies, the model evaluator alone on the same 1,000 rows,
    and parsing the 1,000-row body (what any server of this row format pays)."""
    import warnings

    warnings.simplefilter("ignore")
    import orjson
    from mangum import Mangum

    from pricepipe.serving.columns import ColumnCheck, feature_columns

    bare_handler = Mangum(_shared.bare_app(), lifespan="off")
    service = app.service
    checked = ColumnCheck(service.contract).columns(rows[:1000])
    assert checked is not None
    columns = feature_columns(checked, service.contract)
    model = service.deployed.model
    e1, e1000 = _shared.api_event(rows[0]), _shared.api_event({"rows": rows[:1000]})
    interval, explain = {"interval": "0.8"}, {"explain": "true"}
    i1, i1000 = _shared.api_event(rows[0], interval), _shared.api_event({"rows": rows[:1000]}, interval)
    x1, x1000 = _shared.api_event(rows[0], explain), _shared.api_event({"rows": rows[:1000]}, explain)
    ctx: Any = Context()  # what Mangum reads of a context, not its whole protocol
    body1000 = e1000["body"].encode()
    assert app.handler(e1000, ctx)["statusCode"] == 200 and bare_handler(e1, ctx)["statusCode"] == 200
    for event in (i1, i1000, x1, x1000):  # a model without intervals would answer 409: measure nothing then
        assert app.handler(event, ctx)["statusCode"] == 200, app.handler(event, ctx)["body"]
    one_row = interleaved(
        {
            "handler": lambda: app.handler(e1, ctx),
            "bare_fastapi_mangum": lambda: bare_handler(e1, ctx),
            "handler_interval": lambda: app.handler(i1, ctx),
            "handler_explain": lambda: app.handler(x1, ctx),
        },
        3000,
    )
    batch = interleaved(
        {
            "handler": lambda: app.handler(e1000, ctx),
            "model_alone": lambda: model.predict_columns(columns),
            "json_parse": lambda: orjson.loads(body1000),  # and freeing what it built
            "bare_fastapi_mangum": lambda: bare_handler(e1000, ctx),
            "handler_interval": lambda: app.handler(i1000, ctx),
        },
        200,
    )
    # explanations of 1,000 rows take tens of ms: fewer calls, beside the plain request again
    batch_explain = interleaved(
        {"handler": lambda: app.handler(e1000, ctx), "handler_explain": lambda: app.handler(x1000, ctx)}, 40, blocks=5
    )
    batch["handler_explain"] = batch_explain["handler_explain"]
    batch["handler_beside_explain"] = batch_explain["handler"]
    return {"one_row": one_row, "batch": batch, "rss_mb": _shared.resident_mb()}


def interleaved(calls: dict[str, Callable[[], object]], n: int, blocks: int = 10) -> dict[str, dict[str, float]]:
    """Percentiles of ``n`` timed calls of each, in alternating blocks, so a noisy neighbour weighs on
    all of them alike (after a warm-up of each)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(max(10, n // 20)):
            call()
    for _ in range(blocks):
        for name, call in calls.items():
            for _ in range(n // blocks):
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    return {name: _shared.percentiles(xs) for name, xs in times.items()}


if __name__ == "__main__":
    main()
