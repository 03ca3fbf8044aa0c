"""Serving cold start of another revision beside this checkout's, in one run, with bench_serve's probes.

    python -m benchmarks.bench_cold_compare REV [--runs 9] [--import-runs 3]

``REV``'s serving package, API function and serving-deps.txt (``git archive``) and this checkout's are
each built as ``cdk synth`` builds the layer (pip --platform, .pyc from the runtime's CPython) and run
``-S`` with the layer on the path, as on ``/opt/python``; fresh processes alternate between the two and
the bare FastAPI + Mangum app, so a noisy machine weighs on all three alike. Prints the medians, the
ratios to the bare app, and where each side's imports go by top-level package (``-X importtime``).
The model and request rows are bench_serve's (trained once, then reused).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import tarfile
from pathlib import Path

from benchmarks import bench_serve as serve
from infrastructure import layers

SOURCES = ("layers/pricepipe/pricepipe", "functions/api", "layers/requirements/serving-deps.txt")


def checkout(rev: str, folder: Path) -> Path:
    """The serving sources of ``rev`` under ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, *SOURCES], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def layer(deps: Path, package: Path, folder: Path) -> Path:
    """The serving function's layers merged into one ``python/`` folder, as Lambda extracts them."""
    shutil.rmtree(folder, ignore_errors=True)
    for built in (layers.build_requirements_layer(deps, layers.RUNTIME_PROVIDED), layers.stage_package_layer(package)):
        shutil.copytree(built / "python", folder / "python", dirs_exist_ok=True)
    return folder / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the revision to compare with, e.g. main")
    parser.add_argument("--runs", type=int, default=9, help="cold starts per side")
    parser.add_argument("--import-runs", type=int, default=3, help="cold starts under -X importtime per side")
    args = parser.parse_args()
    work = serve.WORK / "compare"
    serve.WORK.mkdir(parents=True, exist_ok=True)
    serve.prepare(budget_s=5.0, reuse=True)
    rows_file, model_dir = serve.WORK / "rows.json", serve.WORK / "model-layer" / "python"
    python = serve.serving_python()
    old = checkout(args.rev, work / "rev")
    sides = {
        args.rev: (layer(old / SOURCES[2], old / SOURCES[0], work / "layer-rev"), old / SOURCES[1]),
        "this checkout": (layer(serve.SERVING_DEPS, serve.PACKAGE, work / "layer-here"), serve.FUNCTION),
    }
    commands = {
        side: ([python, "-S", str(serve.PROBES / "handler.py"), str(function), str(model_dir), str(rows_file), "cold"],
               serve.clean_env(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1"))
        for side, (site, function) in sides.items()
    }  # fmt: skip
    floor = [str(serve.serving_venv(python) / "bin" / "python"), str(serve.PROBES / "floor_app.py")]
    cold: dict[str, list[float]] = {"bare app": [], **{side: [] for side in sides}}
    for _ in range(args.runs):
        cold["bare app"].append(serve.run_driver(floor, serve.clean_env())[0])
        for side, (command, env) in commands.items():
            cold[side].append(serve.run_driver(command, env)[0])
    medians = {name: statistics.median(seconds) for name, seconds in cold.items()}
    print(f"{python}, {args.runs} cold starts each; medians, s:", {k: round(v, 3) for k, v in medians.items()})
    print("ratio to the bare app:", {side: f"{medians[side] / medians['bare app']:.2f}x" for side in sides})
    print("runs, s:", json.dumps({k: [round(x, 3) for x in v] for k, v in cold.items()}))
    for side, (command, env) in commands.items():
        top = list(serve.import_breakdown(command, env, args.import_runs).items())[:14]
        print(f"{side}, -X importtime self s by top-level package:", json.dumps({k: round(v, 4) for k, v in top}))


if __name__ == "__main__":
    main()
