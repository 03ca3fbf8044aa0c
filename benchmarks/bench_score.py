"""Batch scoring: one scoring child and a whole run on the local cloud, beside the API's handler, in one run.

One LightGBM model is trained on hotel_rates bookings before 2017-06-03 with the project's training
code (as ``bench_serve`` does) and registered as the champion on a local cloud. The rows are the
bookings after the split, repeated (booking ids renumbered) to ``--rows`` (1,000,000), written as
one Parquet file of 50,000-row row groups under the scoring folder. Then, side by side:

(a) the handler path: the same rows sent to ``POST /predict`` in 1,000-row batches through the API
    function's Lambda handler, in process, pinned to one core (the fastest way to use the API:
    what the scoring flow must beat), rows/s over the handler calls; a third of the rows in each of
    three rounds, each round right after one of (b)'s, medians of the rounds;
(b) one scoring child: the ``scoring-score`` function's work on one part of the run's plan (default
    part size), in a fresh process pinned to one core (``benchmarks/probes/score_child.py``), rows/s
    over the call, and the process's peak resident memory (a 1 GB Lambda's limit); beside it, in the
    same process, the lean model alone on the same rows' features (the ceiling of (b));
(c) the whole run: the scoring state machine on the local cloud (its Distributed Map's children in
    the local cloud's Lambda containers, two per function, warmed by a small run first), rows/s from
    start to SUCCEEDED.

Goals (issue 11): (b) >= 3x (a) on one core; (c) >= 1.6x (b) on this machine's two cores; (b)'s
peak memory within 1 GB.

    python -m benchmarks.bench_score [--rows 1000000] [--budget-s 15]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, admin_url, print_table, write_result

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "probes" / "score_child.py"
API_APP = ROOT / "functions" / "api" / "app.py"
INPUT_PREFIX = "scoring/bench/"
ROW_GROUP = 50_000
BATCH = 1000
ROUNDS = 3
GOALS = {"child_vs_handler": 3.0, "run_vs_child": 1.6, "child_peak_mb": 1024.0}


def rows_frame(raw: Any, contract: Any, n: int) -> Any:
    """``n`` input rows: the later bookings repeated, each with a booking id of its own."""
    import numpy as np

    frame = raw.drop(columns=[contract.target])
    repeats = -(-n // len(frame))
    out = frame.loc[np.tile(frame.index.to_numpy(), repeats)[:n]].reset_index(drop=True)
    out["booking_id"] = np.arange(1, n + 1, dtype=np.int64)
    return out


def api_handler(outcome: Any, work: Path) -> Any:
    """(a): a function measuring rows/s of records through the API handler in 1,000-row batches."""
    import warnings

    from benchmarks.bench_serve import model_layer
    from benchmarks.probes import _shared

    warnings.simplefilter("ignore")
    layer = model_layer(outcome, work / "model-layer")
    sys.path[:0] = [str(API_APP.parent), str(layer)]
    spec = importlib.util.spec_from_file_location("bench_score_api", API_APP)
    assert spec and spec.loader
    app: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    sink = open(os.devnull, "w")  # noqa: SIM115 - the prediction log: the runtime's pipe in Lambda
    app.logger.registered_handler.setStream(sink)

    class Context:
        function_name, function_version, memory_limit_in_mb = "pricepipe-api", "1", 512
        invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:pricepipe-api:live"
        aws_request_id, log_group_name, log_stream_name = "bench", "/aws/lambda/pricepipe-api", "bench"

    def rate(records: list[dict[str, Any]]) -> float:
        real_stdout, sys.stdout = sys.stdout, sink
        spent = 0.0
        try:
            app.handler(_shared.api_event({"rows": records[:BATCH]}), Context())  # warm
            for start in range(0, len(records), BATCH):
                event = _shared.api_event({"rows": records[start : start + BATCH]})
                began = time.perf_counter()
                answer = app.handler(event, Context())
                spent += time.perf_counter() - began
                assert answer["statusCode"] == 200, answer["body"][:300]
        finally:
            sys.stdout = real_stdout
        return len(records) / spent

    return rate


def api_records(frame: Any) -> list[dict[str, Any]]:
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    for record in records:
        record["arrival_date"] = record["arrival_date"][:10]
    return list(records)


def main() -> None:  # noqa: PLR0915 - the benchmark's measurements in one sequence, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget-s", type=float, default=15.0, help="the model's hyperparameter search")
    args = parser.parse_args()

    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.bench_serve import train_model
    from pipectl import flows
    from pipectl.localcloud import LocalCloud
    from pipectl.localcloud.daemon import run_migrations
    from pipectl.localcloud.provision import provision
    from pipectl.target import target_from_state
    from pricepipe import scoring
    from pricepipe.contract import load_contract
    from pricepipe.settings import Settings
    from tests.conftest import create_database, drop_database

    print("training the model ...")
    outcome, contract, raw = train_model(args.budget_s)
    frame = rows_frame(raw, contract, args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench-score-", dir=RESULTS.resolve() if RESULTS.exists() else None))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, row_group_size=ROW_GROUP)

    admin = admin_url()
    database = create_database(admin)
    try:
        with LocalCloud(work / "cloud") as cloud:
            resources = provision(cloud, database)
            run_migrations(cloud, resources)
            target = target_from_state(resources.to_dict())
            s3 = target.client("s3")
            s3.put_object(Bucket=target.landing_bucket, Key=f"{INPUT_PREFIX}rows.parquet", Body=buffer.getvalue())
            key = "mlflow/price-model/1/serving/model.npz"
            s3.put_object(Bucket=target.artifacts_bucket, Key=key, Body=outcome.lean.to_bytes())
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO model_registry.models (model_name, version, stage, serving_artifact_uri)"
                    " VALUES ('price-model', '1', 'champion', %s)",
                    (f"s3://{target.artifacts_bucket}/{key}",),
                )
            env = {
                **os.environ,
                "AWS_ENDPOINT_URL": resources.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "PRICEPIPE_DATABASE_URL": database,
                "PYTHONPATH": str(ROOT),
            }
            request = {"input": f"s3://{target.landing_bucket}/{INPUT_PREFIX}"}

            # (a) and (b), interleaved (ROUNDS of each, medians): the machine's load moves both alike.
            # (b) is the first part of a plan with the default part size, a run of its own each round.
            settings = Settings(database_url=database, artifacts_bucket=target.artifacts_bucket)
            os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
            handler = api_handler(outcome, work)
            records = api_records(frame)
            share = -(-len(records) // ROUNDS)
            children, handler_rates = [], []
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            for round_ in range(ROUNDS):
                with psycopg.connect(database, autocommit=True) as conn:
                    planned = scoring.plan(
                        s3, conn, settings, load_contract("hotel_rates"), {**request, "run": f"child-{round_}"}, "child"
                    )
                manifest = planned["manifest"]
                parts = json.loads(s3.get_object(Bucket=manifest["bucket"], Key=manifest["key"])["Body"].read())
                event_file = work / "event.json"
                event_file.write_text(
                    json.dumps({"part": parts[0], **{k: planned[k] for k in ("run", "model", "interval")}})
                )
                print(f"round {round_ + 1}/{ROUNDS}: one child (part 1 of {len(parts)}), then the handler path ...")
                probe = subprocess.run(
                    [sys.executable, str(PROBE), str(event_file)], env=env, capture_output=True, text=True, check=True
                )
                children.append(json.loads(probe.stdout.strip().splitlines()[-1]))
                if cores:
                    os.sched_setaffinity(0, {sorted(cores)[0]})  # one core, as the child's probe
                try:
                    handler_rates.append(handler(records[round_ * share : (round_ + 1) * share]))
                finally:
                    if cores:
                        os.sched_setaffinity(0, cores)
            del records
            child = sorted(children, key=lambda c: c["rows"] / c["seconds"])[ROUNDS // 2]
            child_rate = child["rows"] / child["seconds"]
            child["peak_mb"] = max(c["peak_mb"] for c in children)
            handler_rate = statistics.median(handler_rates)

            # (c) the whole run on the local cloud, its functions warm (as a nightly run's are not, but a
            # cold start is a per-container constant, not a rate): a small run first, two parts at once
            warm = io.BytesIO()
            pq.write_table(
                pa.Table.from_pandas(frame.head(2 * ROW_GROUP), preserve_index=False), warm, row_group_size=ROW_GROUP
            )
            s3.put_object(Bucket=target.landing_bucket, Key="scoring/warm-up/rows.parquet", Body=warm.getvalue())
            warm_input = {
                "input": f"s3://{target.landing_bucket}/scoring/warm-up/",
                "part_rows": ROW_GROUP,
                "run": "warm",
            }
            assert flows.run(target, "scoring", warm_input).succeeded
            print(f"the whole run: {args.rows:,} rows, {len(parts)} parts ...")
            began = time.perf_counter()
            execution = flows.run(target, "scoring", {**request, "run": "whole"})
            run_seconds = time.perf_counter() - began
            assert execution.succeeded, (execution.error, execution.cause)
            assert execution.output["rows_in"] == args.rows, execution.output
            run_rate = args.rows / run_seconds

    finally:
        drop_database(admin, database)

    result = {
        "rows": args.rows,
        "parts": len(parts),
        "part_rows": child["rows"],
        "handler_rows_per_s": handler_rate,
        "child_rows_per_s": child_rate,
        "child_seconds": child["seconds"],
        "model_alone_rows_per_s": child["rows"] / child["model_seconds"],
        "handler_vs_model_alone": statistics.median(handler_rates) / (child["rows"] / child["model_seconds"]),
        "child_rows_per_s_rounds": [c["rows"] / c["seconds"] for c in children],
        "handler_rows_per_s_rounds": handler_rates,
        "child_peak_mb": child["peak_mb"],
        "run_rows_per_s": run_rate,
        "run_seconds": run_seconds,
        "child_vs_handler": child_rate / handler_rate,
        "run_vs_child": run_rate / child_rate,
        "goals": GOALS,
        "model": {"family": outcome.chosen, "n_trees": outcome.model.n_trees, "max_depth": outcome.lean.max_depth},
    }
    ok = {
        "child_vs_handler": result["child_vs_handler"] >= GOALS["child_vs_handler"],
        "run_vs_child": result["run_vs_child"] >= GOALS["run_vs_child"],
        "child_peak_mb": result["child_peak_mb"] <= GOALS["child_peak_mb"],
    }
    print_table(
        f"batch scoring, {args.rows:,} rows ({len(parts)} parts;"
        f" model {outcome.chosen}, {outcome.model.n_trees} trees)",
        [
            ("measured", "rows/s", "ratio", "goal", ""),
            (
                "(a) /predict, 1,000-row batches, handler in process, 1 core, median of 3",
                f"{handler_rate:,.0f}",
                "1.00x",
                "",
                "",
            ),
            (
                f"(b) one scoring child, {child['rows']:,}-row part, 1 core, median of 3",
                f"{child_rate:,.0f}",
                f"{result['child_vs_handler']:.2f}x (a)",
                f">= {GOALS['child_vs_handler']}x (a)",
                "ok" if ok["child_vs_handler"] else "MISSED",
            ),
            (
                "  reference: the lean model alone on (b)'s rows, same process",
                f"{result['model_alone_rows_per_s']:,.0f}",
                f"{result['model_alone_rows_per_s'] / handler_rate:.2f}x (a)",
                "the ceiling of (b)",
                "",
            ),
            (
                "(c) whole run on the local cloud, 2 cores",
                f"{run_rate:,.0f}",
                f"{result['run_vs_child']:.2f}x (b)",
                f">= {GOALS['run_vs_child']}x (b)",
                "ok" if ok["run_vs_child"] else "MISSED",
            ),
            (
                "(b) peak memory, MB",
                f"{child['peak_mb']:,.0f}",
                "",
                f"<= {GOALS['child_peak_mb']:.0f}",
                "ok" if ok["child_peak_mb"] else "MISSED",
            ),
        ],
    )
    write_result("bench_score", result)


if __name__ == "__main__":
    main()
