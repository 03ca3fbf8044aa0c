"""Train, track and register a price model: the AWS Batch job's command.

    python -m training_jobs.train --window-days 365 [--holdout-days 28] [--time-budget-s 300]
        [--seed 42] [--source postgres|lake] [--end YYYY-MM-DD] [--result-uri s3://bucket/key.json]

Settings come from the environment (``PRICEPIPE_*``, the database from a Secrets Manager secret or
``DATABASE_URL``); options override them. The result document (model version, run id, metrics,
serving artifact URI) is printed to stdout as one JSON line and, with ``--result-uri`` or
``PRICEPIPE_TRAINING_RESULT_URI``, written to S3 for the state machine to read after the job; a
failure writes ``{"status": "failed", ...}`` there too. Exit codes: 0 trained and registered, 2 the
input cannot train a model (nothing registered), 1 anything else (nothing registered).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training_jobs.train", description=__doc__.split("\n")[0])
    parser.add_argument("--window-days", type=int, help="days of data up to the end date (default: settings)")
    parser.add_argument("--holdout-days", type=int, help="most recent days held out for scoring")
    parser.add_argument("--validation-days", type=int, help="days before the holdout used by the search")
    parser.add_argument("--time-budget-s", type=float, help="wall-clock budget of the hyperparameter search")
    parser.add_argument("--max-trials", type=int, help="trials per model family at most")
    parser.add_argument("--seed", type=int, help="random seed (same seed and data: same model)")
    parser.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the chosen settings refit on the whole window (default: settings, on)",
    )
    parser.add_argument("--source", choices=("postgres", "lake"), default="postgres", help="where to read features")
    parser.add_argument(
        "--end", type=dt.date.fromisoformat, help="last event (or load) date to train on (default: latest)"
    )
    parser.add_argument(
        "--result-uri",
        default=os.environ.get("PRICEPIPE_TRAINING_RESULT_URI"),
        help="s3://bucket/key.json to write the result document to",
    )
    return parser.parse_args(argv)


def _result_location(uri: str | None) -> tuple[str, str] | None:
    if not uri:
        return None
    from pricepipe import storage

    try:
        return storage.split_uri(uri)
    except storage.InvalidS3Uri as exc:
        raise ValueError(f"--result-uri: {exc}") from exc


def _write_result(s3: S3Client, uri: str | None, result: dict[str, Any]) -> None:
    location = _result_location(uri)
    if location is not None:
        from pricepipe import storage

        storage.put_json(s3, *location, result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _result_location(args.result_uri)
    except ValueError as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import boto3

    from pricepipe import db, registry
    from pricepipe.contract import load_contract
    from pricepipe.errors import ConfigurationError, ContractError
    from pricepipe.observability import logger
    from pricepipe.settings import Settings
    from pricepipe.training.data import TrainingDataError
    from pricepipe.training.job import JobOptions, run_job

    settings = Settings()
    s3 = boto3.client("s3", region_name=settings.region)
    try:
        options = JobOptions.from_settings(
            settings,
            window_days=args.window_days,
            holdout_days=args.holdout_days,
            validation_days=args.validation_days,
            time_budget_s=args.time_budget_s,
            max_trials=args.max_trials,
            seed=args.seed,
            refit_full_window=args.refit,
            source=args.source,
            end=args.end,
        )
        contract = load_contract(settings.contract, s3)
        options.check(contract)
        # the job outlives a rotation of the database password: both its connection and MLflow's go
        # through one DatabaseCredentials, which reads the secret again when the database refuses it
        credentials = db.DatabaseCredentials(settings)
        mlflow = registry.ReconnectingClient(settings, credentials)
        with credentials.call(lambda dsn: db.connect(dsn, autocommit=True), "the training job's connection") as conn:
            result = run_job(options, contract, settings, conn=conn, s3=s3, uri=mlflow)
    except (TrainingDataError, ConfigurationError, ContractError) as exc:
        return _fail(s3, args.result_uri, exc, EXIT_BAD_INPUT, logger)
    except Exception as exc:  # noqa: BLE001 - the job reports every failure the same way, then exits non-zero
        logger.exception("training failed")
        return _fail(s3, args.result_uri, exc, EXIT_FAILED, logger)
    try:
        _write_result(s3, args.result_uri, result)
    except Exception as exc:  # noqa: BLE001 - the version exists, but the flow cannot see it: fail loudly
        logger.exception("could not write the result", extra={"model_version": result["model_version"]})
        print(
            f"training registered version {result['model_version']} but could not write {args.result_uri}: {exc}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    logger.info("model registered", extra={"model_version": result["model_version"], "run_id": result["run_id"]})
    print(json.dumps(result, default=str))
    return 0


def _fail(s3: S3Client, uri: str | None, exc: BaseException, code: int, logger: Any) -> int:
    result = {"status": "failed", "error_type": type(exc).__name__, "error": str(exc)}
    print(f"training failed: {exc}", file=sys.stderr)
    try:
        _write_result(s3, uri, result)
    except Exception as write_error:  # noqa: BLE001 - the training error is the one to report
        logger.warning("could not write the failure result", extra={"error": str(write_error)})
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
