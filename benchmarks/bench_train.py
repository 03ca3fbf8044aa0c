"""Training quality on time-ordered splits of hotel_rates, and whether continuous training pays.

(a) The time split of DESIGN §3: train before 2017-06-03, test on the rest (3,092 rows). RMSE, MAE,
    MAPE, R² and training time of the baseline (median price per group), LightGBM with its defaults
    (the anchor: RMSE 28.9, R² 0.79) and the model the pipeline chooses (``pricepipe.training.train``
    on the same rows, scored through its lean serving artifact), plus that artifact's size and speed.
(b) A rolling backtest: for each month from 2017-01, a model retrained on all data before the month
    against one static model trained on the first six months (2016-07 … 2016-12); RMSE per month and
    the medians, for the pipeline's procedure and for LightGBM defaults.

    python -m benchmarks.bench_train [--budget-s 60] [--backtest-budget-s 10] [--max-trials 20]

Rows go through the data contract's validation and the feature builder first, as the ETL loads them.
No database: the frames are built in memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from typing import Any

import pandas as pd

from benchmarks.common import print_table, write_result

SPLIT = pd.Timestamp("2017-06-03")
ANCHOR = {"rmse": 28.9, "r2": 0.79}


def features() -> tuple[pd.DataFrame, Any]:
    from pipectl.datasource import hotel_rates
    from pricepipe.contract import load_contract, read_csv, validate
    from pricepipe.features import build_features

    contract = load_contract("hotel_rates")
    good = validate(read_csv(hotel_rates().to_csv(index=False).encode(), contract), contract).good
    frame = build_features(good, contract)
    frame = frame.sort_values([contract.event_time, *contract.key], kind="stable").reset_index(drop=True)
    return frame, contract


def _dates(frame: pd.DataFrame, contract: Any) -> pd.Series:
    return pd.to_datetime(frame[contract.event_time])


def pipeline_model(frame: pd.DataFrame, contract: Any, budget_s: float, max_trials: int, seed: int = 42) -> Any:
    from pricepipe.training import SearchSettings, TrainingConfig, TrainingData, TrainingWindow, train

    dates = _dates(frame, contract)
    window = TrainingWindow(dates.min().date(), dates.max().date())
    config = TrainingConfig(
        holdout_days=28, search=SearchSettings(seed=seed, time_budget_s=budget_s, max_trials=max_trials)
    )
    return train(TrainingData(frame, window, "memory"), contract, config)


def lightgbm_defaults(frame: pd.DataFrame, contract: Any) -> Any:
    """LGBMRegressor() as shipped (one thread: steadier on shared cores), on the pipeline's encoding."""
    import lightgbm

    from pricepipe.training.data import encode, fit_encoding

    encoding = fit_encoding(frame, contract)
    categorical = [encoding.index[name] for name in contract.categorical_features]
    model = lightgbm.LGBMRegressor(verbose=-1, n_jobs=1).fit(
        encode(frame, encoding), frame[contract.target].to_numpy(dtype=float), categorical_feature=categorical
    )
    return lambda rows: model.predict(encode(rows, encoding))


def lean_predict(outcome: Any) -> Any:
    from pricepipe.training.data import frame_columns

    return lambda rows: outcome.lean.predict_columns(frame_columns(rows, outcome.lean.encoding))


def baseline(frame: pd.DataFrame, contract: Any) -> Any:
    from pricepipe.training import time_split
    from pricepipe.training.search import GroupMedian, choose_baseline

    fit, validation = time_split(frame, contract, days=28)
    group = choose_baseline(fit, validation, contract.target, contract.categorical_features)
    return GroupMedian.fit(frame, contract.target, group).predict


def _timed(build: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    made = build()
    return made, time.perf_counter() - began


def _cpu_median_us(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.process_time()
        fn()
        times.append(time.process_time() - began)
    return statistics.median(times) * 1e6


def time_split_part(frame: pd.DataFrame, contract: Any, budget_s: float, max_trials: int) -> dict[str, Any]:
    from pricepipe.features import feature_row
    from pricepipe.training import regression_metrics

    dates = _dates(frame, contract)
    train, test = frame[dates < SPLIT].reset_index(drop=True), frame[dates >= SPLIT].reset_index(drop=True)
    actual = test[contract.target].to_numpy(dtype=float)
    results: dict[str, Any] = {"train_rows": len(train), "test_rows": len(test)}
    outcome, seconds = _timed(lambda: pipeline_model(train, contract, budget_s, max_trials))
    for name, build in (
        ("baseline (median per group)", lambda: baseline(train, contract)),
        ("LightGBM defaults", lambda: lightgbm_defaults(train, contract)),
    ):
        predict, took = _timed(build)
        results[name] = {**regression_metrics(actual, predict(test)), "train_seconds": took}
    chosen = f"pipeline: {outcome.chosen}"
    results[chosen] = {**regression_metrics(actual, lean_predict(outcome)(test)), "train_seconds": seconds}
    results["pipeline"] = {
        "chosen": outcome.chosen,
        "params": outcome.model.params,
        "n_trees": outcome.lean.n_trees,
        "max_depth": outcome.lean.max_depth,
        "trials": len(outcome.search.trials),
        "search_seconds": outcome.search.seconds,
        "artifact_bytes": len(outcome.lean.to_bytes()),
        "candidates_holdout_rmse": {k: c.holdout["rmse"] for k, c in outcome.candidates.items()},
    }
    # the lean artifact's evaluation cost (CPU time, so other load on the machine does not count)
    raw = test.head(1000)
    rows = [feature_row(r, contract) for r in raw.to_dict(orient="records")]
    lean = outcome.lean
    results["pipeline"]["lean_predict_us"] = {
        "1 row": _cpu_median_us(lambda: lean.predict_rows(rows[:1]), 2000),
        "1000 rows": _cpu_median_us(lambda: lean.predict_rows(rows), 200),
        "load": _cpu_median_us(lambda: type(lean).load(lean.to_bytes()), 20),
    }
    return results


def backtest(frame: pd.DataFrame, contract: Any, budget_s: float, max_trials: int) -> list[dict[str, Any]]:
    from pricepipe.training import regression_metrics

    dates = _dates(frame, contract)
    first_six = frame[dates < pd.Timestamp("2017-01-01")].reset_index(drop=True)
    static_pipeline = lean_predict(pipeline_model(first_six, contract, budget_s, max_trials))
    static_lgb = lightgbm_defaults(first_six, contract)
    rows = []
    for month in pd.period_range("2017-01", "2017-08", freq="M"):
        start = month.start_time
        test = frame[(dates >= start) & (dates <= month.end_time)].reset_index(drop=True)
        past = frame[dates < start].reset_index(drop=True)
        actual = test[contract.target].to_numpy(dtype=float)
        retrained, seconds = _timed(lambda past=past: pipeline_model(past, contract, budget_s, max_trials))
        rows.append(
            {
                "month": str(month),
                "rows": len(test),
                "static pipeline": regression_metrics(actual, static_pipeline(test))["rmse"],
                "retrained pipeline": regression_metrics(actual, lean_predict(retrained)(test))["rmse"],
                "static LightGBM": regression_metrics(actual, static_lgb(test))["rmse"],
                "retrained LightGBM": regression_metrics(actual, lightgbm_defaults(past, contract)(test))["rmse"],
                "retrain seconds": seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=60.0, help="search budget of the pipeline's model in (a)")
    parser.add_argument("--backtest-budget-s", type=float, default=10.0, help="search budget per retrain in (b)")
    parser.add_argument("--max-trials", type=int, default=20, help="trials per model family at most")
    args = parser.parse_args()

    frame, contract = features()
    began = time.perf_counter()
    split = time_split_part(frame, contract, args.budget_s, args.max_trials)
    models = [k for k in split if isinstance(split[k], dict) and "rmse" in split[k]]
    header: list[tuple[str, ...]] = [("model", "RMSE", "MAE", "MAPE", "R²", "train s")]
    print_table(
        f"(a) time split: train before {SPLIT.date()} ({split['train_rows']} rows), test after"
        f" ({split['test_rows']} rows); anchor LightGBM defaults RMSE {ANCHOR['rmse']}, R² {ANCHOR['r2']}",
        header
        + [
            (
                name,
                f"{split[name]['rmse']:.2f}",
                f"{split[name]['mae']:.2f}",
                f"{split[name]['mape']:.3f}",
                f"{split[name]['r2']:.3f}",
                f"{split[name]['train_seconds']:.1f}",
            )
            for name in models
        ],
    )
    info = split["pipeline"]
    print(
        f"pipeline chose {info['chosen']} {info['params']}: {info['n_trees']} trees, depth {info['max_depth']},"
        f" {info['trials']} trials in {info['search_seconds']:.0f} s; lean artifact {info['artifact_bytes']:,} bytes;"
        f" lean predict CPU µs (median): {', '.join(f'{k} {v:.0f}' for k, v in info['lean_predict_us'].items())}"
    )

    months = backtest(frame, contract, args.backtest_budget_s, args.max_trials)
    columns = ["static pipeline", "retrained pipeline", "static LightGBM", "retrained LightGBM"]
    table: list[tuple[str, ...]] = [("month", "rows", *columns)]
    table += [(m["month"], str(m["rows"]), *(f"{m[c]:.2f}" for c in columns)) for m in months]
    medians = {c: statistics.median(m[c] for m in months) for c in columns}
    table.append(("median", "", *(f"{medians[c]:.2f}" for c in columns)))
    print_table(
        "(b) rolling backtest, RMSE per month: retrained monthly on all data so far vs static (first 6 months)", table
    )

    write_result(
        "train",
        {
            "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "time_split": split,
            "backtest": {"months": months, "medians": medians},
            "seconds": round(time.perf_counter() - began, 1),
        },
    )


if __name__ == "__main__":
    main()
