"""Probe: one scoring child (the scoring-score function's work) on one core, in a fresh process.

    python score_child.py EVENT_FILE

The event is a Map item as the state machine hands it over (part, run, model, interval); S3 and
PostgreSQL come from the environment (AWS_ENDPOINT_URL, PRICEPIPE_DATABASE_URL), as in a function.
Prints the rows it scored, the seconds the call took (imports, clients, the scorer and its model
made first, as a warm container has them) and the process's peak resident memory.
"""

import json
import os
import sys
import time


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the goal states
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import boto3
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    from benchmarks.common import peak_rss_mb
    from pricepipe import db, scoring
    from pricepipe.contract import load_contract
    from pricepipe.settings import get_settings

    with open(sys.argv[1]) as handle:
        event = json.load(handle)
    settings = get_settings()
    s3 = boto3.client("s3", region_name=settings.region)
    contract = load_contract(settings.contract)
    scorer = scoring.Scorer(contract)
    # a warm container holds its model (loaded by its first invocation, as the API's at cold start)
    scorer.model(s3, scoring.ModelRef(**event["model"]), event.get("interval"))
    with db.connect(db.resolve_dsn(settings), autocommit=True) as conn:
        began = time.perf_counter()
        result = scoring.score_part(conn, s3, settings, scorer, event)
        seconds = time.perf_counter() - began
    peak = peak_rss_mb()
    # the ceiling, in the same process: the lean model alone on the same rows' features, batch by batch
    model = scorer.model(s3, scoring.ModelRef(**event["model"]), event.get("interval"))
    table = scoring.read_part(s3, contract, event["part"])
    model_seconds = 0.0
    for offset in range(0, table.num_rows, scoring.BATCH_ROWS):
        good, _ = scoring._checked(scorer, table.slice(offset, scoring.BATCH_ROWS), offset)
        features = scoring.model_features(contract, good)
        began = time.perf_counter()
        model.predict_columns(features)
        model_seconds += time.perf_counter() - began
    rows, scored = result.rows_in, result.rows_scored
    print(
        json.dumps(
            {"rows": rows, "scored": scored, "seconds": seconds, "model_seconds": model_seconds, "peak_mb": peak}
        )
    )


if __name__ == "__main__":
    main()
