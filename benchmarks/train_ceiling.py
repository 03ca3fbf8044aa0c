"""What LightGBM settings reach on bench-train's hotel_rates test rows, scored on those rows directly.

A diagnostic, never a selection: the pipeline chooses on validation days before the test period
(benchmarks/bench_train.py). This asks how far below LightGBM's defaults *any* of a few settings gets
when judged on the test rows themselves, and at what serving cost (trees x depth, the lean
evaluator's cost; the search caps it at ``SearchSettings.max_tree_levels``, 800, for DESIGN §5's
1,000-row budget). Each setting is fitted with three seeds on the same features and encoding as
bench-train's defaults.

    python -m benchmarks.train_ceiling
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.bench_train import SPLIT, _dates, features

SEEDS = (0, 1, 2)
SETTINGS: tuple[dict[str, Any], ...] = (
    {"learning_rate": 0.1, "n_estimators": 100, "max_depth": 8, "colsample_bytree": 0.6, "subsample": 0.8},
    {"learning_rate": 0.05, "n_estimators": 200, "max_depth": 8, "colsample_bytree": 0.5, "subsample": 0.8},
    {"learning_rate": 0.05, "n_estimators": 300, "max_depth": 6, "colsample_bytree": 0.5, "subsample": 0.8},
    {"learning_rate": 0.03, "n_estimators": 600, "max_depth": 8, "colsample_bytree": 0.6, "subsample": 0.8},
)


def main() -> None:
    import lightgbm

    from pricepipe.training.data import encode, fit_encoding

    frame, contract = features()
    dates = _dates(frame, contract)
    train, test = frame[dates < SPLIT].reset_index(drop=True), frame[dates >= SPLIT].reset_index(drop=True)
    encoding = fit_encoding(train, contract)
    categorical = [encoding.index[name] for name in contract.categorical_features]
    x, y = encode(train, encoding), train[contract.target].to_numpy(dtype=float)
    x_test, y_test = encode(test, encoding), test[contract.target].to_numpy(dtype=float)

    def rmse(params: dict[str, Any], seed: int) -> float:
        model = lightgbm.LGBMRegressor(verbose=-1, n_jobs=1, random_state=seed, **params)
        model.fit(x, y, categorical_feature=categorical)
        return float(np.sqrt(np.mean((model.predict(x_test) - y_test) ** 2)))

    defaults = rmse({}, 0)
    print(f"LightGBM defaults: RMSE {defaults:.2f} on {len(test):,} test rows")
    print("settings | tree levels | RMSE / defaults, seeds " + " / ".join(map(str, SEEDS)))
    for params in SETTINGS:
        fitted = {**params, "subsample_freq": 1}
        ratios = " / ".join(f"{rmse(fitted, seed) / defaults:.3f}" for seed in SEEDS)
        print(f"{params} | {params['n_estimators'] * params['max_depth']} | {ratios}")


if __name__ == "__main__":
    main()
