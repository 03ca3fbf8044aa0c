"""Prediction intervals: their holdout coverage on hotel_rates, three windows, as training reports it.

    python -m benchmarks.bench_intervals [--max-trials 4] [--budget-s 600]

Each window (bookings before 2017-03-01, 2017-06-03 and 2017-09-01; seeds 7, 1 and 42) is trained
with the project's trainer (``pricepipe.training.train``, both families, 28 holdout days), which
calibrates the intervals on the validation days and measures them on the holdout
(:mod:`pricepipe.training.intervals`). The goal: an 80% interval covers 77-83% of the holdout rows.
The search stops on its trial count, not the clock (the budget is only a ceiling), so a run repeats
exactly: which model the search picks changes the coverage by a few points on these ~1,000-row
holdouts.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import pandas as pd

from benchmarks.common import print_table, write_result

WINDOWS = (("2017-03-01", 7), ("2017-06-03", 1), ("2017-09-01", 42))  # (bookings before, seed)
LEVELS = ("0.5", "0.8", "0.9", "0.95")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=4, help="search trials per family")
    parser.add_argument("--budget-s", type=float, default=600.0, help="search time ceiling per window")
    args = parser.parse_args()

    from benchmarks.bench_train import features
    from pricepipe.training import SearchSettings, TrainingConfig, TrainingData, TrainingWindow, train

    frame, contract = features()
    runs: list[dict[str, Any]] = []
    for end, seed in WINDOWS:
        before = frame[pd.to_datetime(frame[contract.event_time]) < pd.Timestamp(end)].reset_index(drop=True)
        dates = pd.to_datetime(before[contract.event_time])
        search = SearchSettings(seed=seed, time_budget_s=args.budget_s, max_trials=args.max_trials)
        window = TrainingWindow(dates.min().date(), dates.max().date())
        outcome = train(
            TrainingData(before, window, "memory"), contract, TrainingConfig(holdout_days=28, search=search)
        )
        interval = outcome.lean.interval
        assert interval is not None
        runs.append(
            {
                "before": end,
                "seed": seed,
                "family": outcome.chosen,
                "holdout_rmse": outcome.metrics["rmse"],
                "calibration_rows": interval.calibration_rows,
                **{k: interval.info[k] for k in ("holdout_rows", "holdout_coverage", "holdout_mean_width")},
            }
        )
        print(runs[-1], flush=True)
    print_table(
        "prediction intervals on hotel_rates: holdout coverage (goal at 0.8: 0.77-0.83)",
        [
            ("bookings before", "model", "holdout RMSE", "calibration / holdout rows", *LEVELS, "80% mean width"),
            *(
                (
                    r["before"],
                    r["family"],
                    f"{r['holdout_rmse']:.2f}",
                    f"{r['calibration_rows']} / {r['holdout_rows']}",
                    *(f"{r['holdout_coverage'][k]:.3f}" for k in LEVELS),
                    f"{r['holdout_mean_width']['0.8']:.1f}",
                )
                for r in runs
            ),
        ],
    )
    write_result("intervals", {"run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "runs": runs})


if __name__ == "__main__":
    main()
