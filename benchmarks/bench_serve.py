"""Serving: the API's Lambda handler against MLflow's own serving of the same model, in one run.

One LightGBM model is trained on hotel_rates bookings before 2017-06-03 with the project's training
code (``pricepipe.training.train``, LightGBM family only), then

- exported as the lean artifact and packed as the model layer the API function reads, and
- saved as an MLflow model exactly as the registry logs it (sklearn flavour: the contract's feature
  encoding + the LGBMRegressor, pyfunc-loadable).

Requests are real bookings from after the split. Figures, each beside MLflow's and the DESIGN §5
budget:

(a) package size: the serving layers (``layers/requirements/serving-deps.txt`` + the pricepipe package)
    vs an MLflow pyfunc serving environment (mlflow-skinny + the model's own requirements), both
    built by ``infrastructure/layers.py`` as ``cdk synth`` builds a layer (``pip install --platform
    manylinux… --python-version 3.12``, the AWS SDK and test suites taken out), MB unzipped
    (``layers.unzipped_bytes``); ours with the ``.pyc`` the CDK layers ship and without;
(b) cold start: fresh process → first answer, through the Lambda handler with an API Gateway event,
    in a python3.12 environment holding only the serving packages, with ``.pyc`` as the CDK layer
    ships them — the layer itself (``-S``, nothing written, as on the read-only ``/opt``) and a venv
    — vs fresh process → ``mlflow.pyfunc.load_model`` + first ``predict``; median of runs. Anchors in
    the same runs: importing fastapi + mangum + numpy alone, and a bare FastAPI + Mangum app
    answering one event (the floor the issue's stack sets); and where our cold start goes, by
    top-level package, from ``python -X importtime`` (median of runs);
(c) warm p50/p99, one row and 1,000 rows, through the handler vs ``pyfunc.predict`` on the same rows
    (MLflow gets the model-feature frame ready-made: its input schema is features, not raw rows);
    ours in several fresh processes (median of their p50s/p99s), each beside a bare FastAPI +
    Mangum app (one row) and the lean model alone (1,000 rows) measured interleaved with it;
(d) HTTP throughput, one uvicorn worker on loopback, ``wrk`` with 8 connections, one row per request:
    our app vs ``mlflow models serve --env-manager local`` (each in its own request format);
(e) resident memory after warm-up of each server (MLflow's whole process tree);
(f) what ``?interval=0.8`` and ``?explain=true`` cost: the same requests with each, measured
    interleaved with the plain ones in the same processes, as µs per row (one row; in a 1,000-row
    batch), and the model artifact's size and its intervals' holdout coverage from training.

    python -m benchmarks.bench_serve [--budget-s 20] [--runs 7] [--warm-runs 3] [--http-seconds 10]

Our layers are cached where ``cdk synth`` caches them (``build/layers/``), MLflow's under
``.bench/serve/``. The fresh processes run the scripts in ``benchmarks/probes/``. The API's
prediction log lines go to /dev/null in the handler measurements (in Lambda they go to the
runtime's log pipe)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import RESULTS, print_table, write_result
from infrastructure import layers

ROOT = Path(__file__).resolve().parent.parent
WORK = RESULTS.resolve() / "serve"
SERVING_DEPS = ROOT / "layers" / "requirements" / "serving-deps.txt"
PACKAGE = ROOT / "layers" / "pricepipe" / "pricepipe"
FUNCTION = ROOT / "functions" / "api"
PROBES = Path(__file__).resolve().parent / "probes"
SPLIT = pd.Timestamp("2017-06-03")
MLFLOW_SKINNY = "mlflow-skinny==3.17.2"
UVICORN = "uvicorn==0.54.0"  # bench only (HTTP figure): Lambda needs no server
ANCHOR_BARE_P50_MS = 0.176  # DESIGN §4: a lean FastAPI app through Mangum, API Gateway v1 event, p50
BUDGET = {
    "size_mb": 100.0,
    "cold_s": 0.6,
    "one_p50_ms": 0.5,
    "one_p99_ms": 2.0,
    "batch_p50_ms": 10.0,
    "http_ratio": 10.0,
    "rss_mb": 150.0,
}


# -- the model ---------------------------------------------------------------------------------------


def train_model(budget_s: float) -> tuple[Any, Any, pd.DataFrame]:
    """The pipeline's LightGBM model on bookings before the split; returns (outcome, contract, later raw rows)."""
    from benchmarks.bench_train import features
    from pipectl.datasource import hotel_rates
    from pricepipe.training import SearchSettings, TrainingConfig, TrainingData, TrainingWindow, train

    frame, contract = features()
    before = frame[pd.to_datetime(frame[contract.event_time]) < SPLIT].reset_index(drop=True)
    dates = pd.to_datetime(before[contract.event_time])
    search = SearchSettings(seed=42, time_budget_s=budget_s, max_trials=10, families=("lightgbm",))
    outcome = train(
        TrainingData(before, TrainingWindow(dates.min().date(), dates.max().date()), "memory"),
        contract,
        TrainingConfig(holdout_days=28, search=search),
    )
    raw = hotel_rates()
    raw = raw[pd.to_datetime(raw[contract.event_time]) >= SPLIT].dropna(subset=["country"]).reset_index(drop=True)
    return outcome, contract, raw


def request_rows(raw: pd.DataFrame, contract: Any, n: int) -> list[dict[str, Any]]:
    rows = json.loads(raw.head(n).drop(columns=[contract.target]).to_json(orient="records", date_format="iso"))
    for row in rows:
        row[contract.event_time] = row[contract.event_time][:10]
    return rows


def feature_frame(rows: list[dict[str, Any]], contract: Any) -> pd.DataFrame:
    """The model-feature frame MLflow's signature takes, for the same rows."""
    from pricepipe.features import build_features

    frame = pd.DataFrame(rows).assign(**{contract.event_time: lambda f: pd.to_datetime(f[contract.event_time])})
    out = build_features(frame, contract)[list(contract.feature_columns)]
    return out.astype(dict.fromkeys(contract.categorical_features, object))


def save_mlflow_model(outcome: Any, contract: Any, path: Path) -> None:
    """The model as the registry logs it (pricepipe.training.tracking.log_model), saved to a folder."""
    import lightgbm
    import mlflow.sklearn
    import numpy as np
    import pandas
    import sklearn
    import skops
    from mlflow.models import infer_signature

    from pricepipe.training.pipeline import SKOPS_TRUSTED_TYPES, model_pipeline

    pipeline = model_pipeline(outcome.served_encoding, outcome.served_model, outcome.model.target_transform)
    example = outcome.holdout[list(contract.feature_columns)].head(5)
    example = example.astype(dict.fromkeys(contract.categorical_features, object))
    shutil.rmtree(path, ignore_errors=True)
    mlflow.sklearn.save_model(
        pipeline,
        str(path),
        signature=infer_signature(example, pipeline.predict(example)),
        input_example=example,
        pip_requirements=[
            f"numpy=={np.__version__}",
            f"scikit-learn=={sklearn.__version__}",
            f"pandas=={pandas.__version__}",
            f"skops=={skops.__version__}",
            f"lightgbm=={lightgbm.__version__}",
        ],
        code_paths=[str(PACKAGE)],
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )


def model_layer(outcome: Any, folder: Path) -> Path:
    """The model layer as the API function gets it; returns its ``python/`` folder."""
    from pricepipe.serving.model_layer import build_layer_zip

    shutil.rmtree(folder, ignore_errors=True)
    metadata = {"model_name": "price-model", "model_version": "1", "alias": "champion"}
    zipfile.ZipFile(io.BytesIO(build_layer_zip(outcome.lean.to_bytes(), metadata))).extractall(folder)
    return folder / "python"


# -- environments ------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def mlflow_environment(requirements: list[str]) -> Path:
    """MLflow's pyfunc serving environment built as one of our layers would be; returns its ``python/``."""
    folder = WORK / "builds"
    folder.mkdir(parents=True, exist_ok=True)
    listed = folder / f"mlflow-pyfunc-{_digest(*requirements)}.txt"
    listed.write_text("\n".join(requirements) + "\n")
    return layers.build_requirements_layer(listed, layers.RUNTIME_PROVIDED, WORK / "layers", bytecode=None) / "python"


def serving_layer() -> Path:
    """The API function's layers as ``cdk synth`` builds them (serving-deps, then the pricepipe
    package, both with the ``.pyc`` they ship), in one folder as Lambda extracts them into /opt/python."""
    deps = layers.build_requirements_layer(SERVING_DEPS, layers.RUNTIME_PROVIDED)
    package = layers.stage_package_layer(PACKAGE)
    layer = WORK / "serving-layer"
    shutil.rmtree(layer, ignore_errors=True)
    for built in (deps, package):
        shutil.copytree(built / "python", layer / "python", dirs_exist_ok=True)
    return layer / "python"


def size_mb(folder: Path, bytecode: bool = True) -> float:
    """MB unzipped, as Lambda counts it; ``bytecode=False`` leaves the ``.pyc`` out (as DESIGN's anchors)."""
    return layers.unzipped_bytes(folder, skip_suffixes=() if bytecode else (".pyc",)) / 1e6


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def serving_python() -> str:
    """The CPython the layers' ``.pyc`` come from (the Lambda runtime's version); else this one,
    which the results then name."""
    bytecode = layers.bytecode_interpreter()
    return str(bytecode.python) if bytecode is not None else sys.executable


def serving_venv(python: str) -> Path:
    """A venv holding only the serving requirements and the pricepipe package (+ uvicorn for HTTP)."""
    venv = RESULTS.resolve() / "serving-venv"
    key = _digest(SERVING_DEPS.read_text(), UVICORN, python)
    stamp = venv / ".requirements"
    if not (stamp.exists() and stamp.read_text() == key):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(SERVING_DEPS), UVICORN], check=True)
        stamp.write_text(key)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    shutil.rmtree(site / "pricepipe", ignore_errors=True)  # this checkout's package, compiled like pip does
    shutil.copytree(PACKAGE, site / "pricepipe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(site / "pricepipe")], check=True)
    return venv


# -- fresh processes -------------------------------------------------------------------------------


def import_breakdown(command: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Where a cold start goes: ``-X importtime`` self times summed by top-level package, median of
    ``runs`` fresh processes. A module's self time includes its own top-level code, so ``app`` is the
    function's init work (settings, contract, model, the FastAPI app); what follows the imports (the
    first request) is the difference to the first answer."""
    per_run: list[dict[str, float]] = []
    for _ in range(runs):
        done = subprocess.run(
            [command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, env=env, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"importtime run failed:\n{done.stderr[-3000:]}")
        totals: dict[str, float] = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
                continue
            self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            top = name.split(".")[0]
            totals[top] = totals.get(top, 0.0) + float(self_us) / 1e6
        first = json.loads(done.stdout.strip().splitlines()[-1])["first_answer_in_process_s"]
        totals["(all imports, app's init work included)"] = sum(totals.values())
        totals["(after the imports: the first answer)"] = first - totals["(all imports, app's init work included)"]
        per_run.append(totals)
    names = {name for totals in per_run for name in totals}
    medians = {name: statistics.median(t.get(name, 0.0) for t in per_run) for name in names}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


def run_driver(command: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall time from spawning a fresh process to its answer (to its exit when it does not say when it
    answered: the imports-only floor), and what it printed."""
    began, began_wall = time.perf_counter(), time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # the process's own exit (freeing everything) is no part of a cold start
    return (out["answered_at"] - began_wall if "answered_at" in out else elapsed), out


def clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "POWERTOOLS_SERVICE_NAME": "pricepipe-api", "AWS_LAMBDA_FUNCTION_VERSION": "1", **extra}


# -- HTTP ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def server(
    command: list[str], env: dict[str, str], probe_url: str, cwd: Path = ROOT, timeout_s: float = 120
) -> Iterator[int]:
    """A server in its own process group, until it answers ``probe_url``; yields its pid."""
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(probe_url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[:3]} did not answer {probe_url}") from None
                time.sleep(0.2)
        yield process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def tree_rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def wrk(url: str, body: bytes, seconds: int) -> dict[str, Any]:
    """Requests per second with wrk (one thread, 8 connections) posting ``body``."""
    if shutil.which("wrk") is None:
        raise SystemExit("the HTTP figures need wrk (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
        )
    done = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    )
    os.unlink(script.name)
    text = done.stdout
    rate = float(text.split("Requests/sec:")[1].split()[0])
    errors = int(text.split("Non-2xx or 3xx responses:")[1].split()[0]) if "Non-2xx" in text else 0
    p50 = text.split("50%")[1].split()[0] if "50%" in text else ""
    return {"requests_per_s": rate, "non_2xx": errors, "latency_p50": p50, "tool": "wrk -t1 -c8"}


def http_ours(
    venv: Path, model_dir: Path, row: dict[str, Any], seconds: int, app_dir: Path = FUNCTION, app: str = "app:app"
) -> dict[str, Any]:
    """Our app (or, with ``app_dir`` and ``app``, another such as the bare reference) under uvicorn."""
    port = free_port()
    env = clean_env(PYTHONPATH=f"{app_dir}:{model_dir}")
    command = [str(venv / "bin" / "python"), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--no-access-log", "--log-level", "warning", "--app-dir", str(app_dir)]
    body = json.dumps(row).encode()
    # from the app's folder: "app" is functions/api/app.py there, not the repository's CDK app.py
    with server(command, env, f"http://127.0.0.1:{port}/health", cwd=app_dir) as pid:
        url = f"http://127.0.0.1:{port}/predict"
        status, answer = post(url, body)
        assert status == 200, answer
        for _ in range(200):
            post(url, body)
        result = wrk(url, body, seconds)
        result["rss_mb"] = tree_rss_mb(pid)
    return result


def http_mlflow(model_path: Path, frame: pd.DataFrame, seconds: int) -> dict[str, Any]:
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "models", "serve", "-m", str(model_path), "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    # mlflow execs "uvicorn" from PATH: the venv's bin folder must be on it
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_DISABLE_TELEMETRY": "true"}
    body = json.dumps({"dataframe_split": json.loads(frame.head(1).to_json(orient="split", index=False))}).encode()
    with server(command, env, f"http://127.0.0.1:{port}/ping") as pid:
        url = f"http://127.0.0.1:{port}/invocations"
        status, answer = post(url, body)
        if status != 200:
            return {"error": f"mlflow models serve answered {status}: {answer.decode()[:500]}"}
        for _ in range(50):
            post(url, body)
        result = wrk(url, body, seconds)
        result["rss_mb"] = tree_rss_mb(pid)
        result["answer"] = json.loads(answer)
    return result


# -- the run -------------------------------------------------------------------------------------------


def _within(value: float | None, budget: float, smaller_is_better: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value <= budget if smaller_is_better else value >= budget
    return "yes" if ok else "NO"


def prepare(budget_s: float, reuse: bool) -> dict[str, Any]:
    """Train the model and write what the probes read (or, with ``reuse``, keep the last run's)."""
    summary_file = WORK / "model-summary.json"
    if reuse and summary_file.exists() and (WORK / "model-layer" / "python").is_dir():
        print("reusing the last run's model ...")
        return dict(json.loads(summary_file.read_text()))
    print("training the model ...")
    outcome, contract, raw = train_model(budget_s)
    rows = request_rows(raw, contract, 1000)
    frame = feature_frame(rows, contract)
    (WORK / "rows.json").write_text(json.dumps(rows))
    frame.to_pickle(WORK / "features.pickle")
    save_mlflow_model(outcome, contract, WORK / "mlflow-model")
    model_layer(outcome, WORK / "model-layer")
    interval = outcome.lean.interval
    summary = {
        "family": outcome.chosen,
        "n_trees": outcome.model.n_trees,
        "max_depth": outcome.lean.max_depth,
        "holdout": outcome.metrics,
        "artifact_mb": len(outcome.lean.to_bytes()) / 1e6,
        "interval": None if interval is None else {
            "sigma_trees": interval.sigma.n_trees,
            "calibration_rows": interval.calibration_rows,
            **{k: interval.info[k] for k in ("holdout_coverage", "holdout_mean_width", "holdout_rows")},
        },
        "training_seconds": outcome.seconds,
    }  # fmt: skip
    summary_file.write_text(json.dumps(summary, default=str))
    return summary


def _median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run ``{p50_ms, p99_ms, n}`` summaries → their medians, and the runs' own figures."""
    return {
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "p50_ms_runs": [r["p50_ms"] for r in runs],
        "p99_ms_runs": [r["p99_ms"] for r in runs],
    }


def main() -> None:  # noqa: PLR0915 - the benchmark's measurements run in one sequence, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=20.0, help="training search budget")
    parser.add_argument("--runs", type=int, default=7, help="cold starts per side")
    parser.add_argument("--warm-runs", type=int, default=3, help="fresh processes measuring our warm latency")
    parser.add_argument("--import-runs", type=int, default=5, help="cold starts under -X importtime")
    parser.add_argument("--http-seconds", type=int, default=10, help="0: skip the HTTP figures (they need wrk)")
    parser.add_argument("--reuse-model", action="store_true", help="keep the last run's model (no training)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    model = prepare(args.budget_s, args.reuse_model)
    rows = json.loads((WORK / "rows.json").read_text())
    rows_file, frame_file = WORK / "rows.json", WORK / "features.pickle"
    frame = pd.read_pickle(frame_file)
    mlflow_model = WORK / "mlflow-model"
    model_dir = WORK / "model-layer" / "python"

    print("building the serving layer and the MLflow serving environment (pip --platform, cached) ...")
    python = serving_python()
    layer = serving_layer()
    # the model's own requirements, with mlflow-skinny in place of whatever mlflow line MLflow adds
    model_requirements = _requirements(mlflow_model / "requirements.txt")
    mlflow_requirements = [MLFLOW_SKINNY, *(r for r in model_requirements if not r.startswith(("mlflow", "-")))]
    mlflow_env = mlflow_environment(mlflow_requirements)
    sizes: dict[str, Any] = {
        # function code + its layers (dependencies and pricepipe with .pyc, as the CDK ships them;
        # the model layer), unzipped
        "ours_mb": size_mb(layer) + size_mb(model_dir) + size_mb(FUNCTION, bytecode=False),
        "ours_layer_mb": size_mb(layer),
        "ours_sources_mb": size_mb(layer, bytecode=False),  # as DESIGN's anchors count: without .pyc
        "ours_package_mb": size_mb(layer / "pricepipe", bytecode=False),
        "model_layer_mb": size_mb(model_dir),
        "mlflow_mb": size_mb(mlflow_env),
        "mlflow_requirements": mlflow_requirements,
    }

    venv = serving_venv(python)
    venv_python = str(venv / "bin" / "python")
    pyfunc_driver, floor_app_driver = PROBES / "pyfunc.py", PROBES / "floor_app.py"
    handler_args = [str(PROBES / "handler.py"), str(FUNCTION), str(model_dir), str(rows_file)]

    print(f"cold starts ({args.runs} each, interleaved) ...")
    # Lambda-like: the runtime's python with the layer (and its .pyc) on the path, no site-packages,
    # nothing written (/opt is read-only)
    layer_env = clean_env(PYTHONPATH=str(layer), PYTHONDONTWRITEBYTECODE="1")
    cold: dict[str, list[float]] = {
        "ours_layer": [],
        "ours_venv": [],
        "floor_imports": [],
        "floor_app": [],
        "mlflow": [],
    }
    # the imports alone
    floor = [
        venv_python,
        "-c",
        "import fastapi, mangum, numpy, json, time; print(json.dumps({'answered_at': time.time()}))",
    ]
    mlflow_env_vars = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    for _ in range(args.runs):
        cold["floor_imports"].append(run_driver(floor, clean_env())[0])
        cold["floor_app"].append(run_driver([venv_python, str(floor_app_driver)], clean_env())[0])
        cold["ours_layer"].append(run_driver([python, "-S", *handler_args, "cold"], layer_env)[0])
        cold["ours_venv"].append(run_driver([venv_python, *handler_args, "cold"], clean_env())[0])
        cold["mlflow"].append(
            run_driver(
                [sys.executable, str(pyfunc_driver), str(mlflow_model), str(frame_file), "cold"], mlflow_env_vars
            )[0]
        )
    print("cold start medians, s:", {k: round(statistics.median(v), 3) for k, v in cold.items()})
    print(f"import breakdown ({args.import_runs} runs each) ...")
    imports = import_breakdown([python, "-S", *handler_args, "cold"], layer_env, args.import_runs)
    floor_imports = import_breakdown([python, "-S", str(floor_app_driver)], layer_env, args.import_runs)
    # what our function adds to the bare app's cold start, package by package (negative: noise)
    added = {name: seconds - floor_imports.get(name, 0.0) for name, seconds in imports.items()}
    added = dict(sorted(added.items(), key=lambda item: -item[1]))

    print(f"warm latency ({args.warm_runs} processes) ...")
    ours_runs = [run_driver([venv_python, *handler_args, "warm"], clean_env())[1] for _ in range(args.warm_runs)]
    _, mlflow_warm = run_driver(
        [sys.executable, str(pyfunc_driver), str(mlflow_model), str(frame_file), "warm"], mlflow_env_vars
    )
    ours_warm = {
        "one_row": {k: _median_summary([r["one_row"][k] for r in ours_runs]) for k in ours_runs[0]["one_row"]},
        "batch": {k: _median_summary([r["batch"][k] for r in ours_runs]) for k in ours_runs[0]["batch"]},
        "rss_mb": statistics.median(r["rss_mb"] for r in ours_runs),
        "runs": ours_runs,
    }

    print("warm:", json.dumps({"ours": {k: ours_warm[k] for k in ("one_row", "batch")}, "mlflow": mlflow_warm}))
    print(f"HTTP throughput ({args.http_seconds} s each) ..." if args.http_seconds else "HTTP figures skipped")
    skipped: dict[str, Any] = {"error": "skipped (--http-seconds 0)"}
    http: dict[str, dict[str, Any]] = (
        {"ours": skipped, "reference_bare_fastapi": skipped, "mlflow": skipped}
        if not args.http_seconds
        else {
            "ours": http_ours(venv, model_dir, rows[0], args.http_seconds),
            "reference_bare_fastapi": http_ours(
                venv, model_dir, rows[0], args.http_seconds, app_dir=PROBES, app="reference_app:app"
            ),
        }
    )
    try:
        if args.http_seconds:
            http["mlflow"] = http_mlflow(mlflow_model, frame, args.http_seconds)
    except (RuntimeError, OSError) as exc:
        http["mlflow"] = {"error": str(exc)}

    med = {k: statistics.median(v) for k, v in cold.items()}
    ours_rps = http["ours"].get("requests_per_s")
    mlflow_rps = http["mlflow"].get("requests_per_s")
    bare_rps = http["reference_bare_fastapi"].get("requests_per_s")
    ratio = ours_rps / mlflow_rps if ours_rps and mlflow_rps else None
    one, batch = ours_warm["one_row"], ours_warm["batch"]
    mine, bare, alone = one["handler"], one["bare_fastapi_mangum"], batch["model_alone"]
    # the 1,000-row floor: the bare app carrying the same body, parsing it, and the model alone
    batch_floor_ms = batch["bare_fastapi_mangum"]["p50_ms"] + batch["json_parse"]["p50_ms"] + alone["p50_ms"]
    # how much slower this machine is now than when DESIGN's anchors were measured (bare app: 176 us)
    slowdown = bare["p50_ms"] / ANCHOR_BARE_P50_MS
    ours_share = {  # of each figure, what our code adds to the floor measured beside it
        "cold_start": 1 - med["floor_app"] / med["ours_layer"],
        "one_row_p50": 1 - bare["p50_ms"] / mine["p50_ms"],
        "batch_p50": 1 - batch_floor_ms / batch["handler"]["p50_ms"],
    }
    f1, f3, fx, pct = (lambda v: f"{v:.1f}"), (lambda v: f"{v:.3f}"), (lambda v: f"{v:.1f}x"), (lambda v: f"{v:.0%}")
    # what each option adds per row: one row, and in the 1,000-row batch (explain's beside its own plain runs)
    per_row_us = {
        "interval_one_row": (one["handler_interval"]["p50_ms"] - mine["p50_ms"]) * 1e3,
        "explain_one_row": (one["handler_explain"]["p50_ms"] - mine["p50_ms"]) * 1e3,
        "interval_in_batch": batch["handler_interval"]["p50_ms"] - batch["handler"]["p50_ms"],
        "explain_in_batch": batch["handler_explain"]["p50_ms"] - batch["handler_beside_explain"]["p50_ms"],
    }
    coverage = (model.get("interval") or {}).get("holdout_coverage", {})
    table = [
        ("serving function + layers, MB unzipped (with .pyc)", f1(sizes["ours_mb"]), f1(sizes["mlflow_mb"]),
         "≤ 100", _within(sizes["ours_mb"], BUDGET["size_mb"])),
        ("  the dependency + pricepipe layer without .pyc (as DESIGN's anchors)", f1(sizes["ours_sources_mb"]), "",
         "", ""),
        ("cold start to first answer, s (layer, .pyc, -S)", f3(med["ours_layer"]), f3(med["mlflow"]), "≤ 0.6",
         _within(med["ours_layer"], BUDGET["cold_s"])),
        ("cold start, s: venv with .pyc", f3(med["ours_venv"]), "", "≤ 0.6",
         _within(med["ours_venv"], BUDGET["cold_s"])),
        ("  reference: bare FastAPI+Mangum app, first answer, s", f3(med["floor_app"]), "", "",
         f"ours adds {pct(ours_share['cold_start'])}"),
        ("  reference: import fastapi+mangum+numpy alone, s", f3(med["floor_imports"]), "", "", ""),
        ("warm 1 row p50, ms", f3(mine["p50_ms"]), f3(mlflow_warm["one_row"]["p50_ms"]), "≤ 0.5",
         _within(mine["p50_ms"], BUDGET["one_p50_ms"])),
        ("warm 1 row p99, ms", f3(mine["p99_ms"]), f3(mlflow_warm["one_row"]["p99_ms"]), "≤ 2",
         _within(mine["p99_ms"], BUDGET["one_p99_ms"])),
        ("  reference: bare FastAPI+Mangum p50, ms (anchor 0.176)", f3(bare["p50_ms"]), "", "",
         f"machine {fx(slowdown)}"),
        ("warm 1,000 rows p50, ms", f3(batch["handler"]["p50_ms"]), f3(mlflow_warm["batch"]["p50_ms"]), "≤ 10",
         _within(batch["handler"]["p50_ms"], BUDGET["batch_p50_ms"])),
        ("warm 1,000 rows p99, ms", f3(batch["handler"]["p99_ms"]), f3(mlflow_warm["batch"]["p99_ms"]), "", ""),
        ("  reference: the lean model alone, 1,000 rows p50, ms", f3(alone["p50_ms"]), "", "", ""),
        ("  reference: parsing the 1,000-row body (orjson), p50, ms", f3(batch["json_parse"]["p50_ms"]), "", "",
         ""),
        ("  reference: bare FastAPI+Mangum, 1,000-row body, p50, ms", f3(batch["bare_fastapi_mangum"]["p50_ms"]),
         "", "", ""),
        ("  floor: bare app + parse + model, ms", f3(batch_floor_ms), "", "",
         f"ours adds {pct(ours_share['batch_p50'])}"),
        ("HTTP req/s, 1 uvicorn worker", f1(ours_rps) if ours_rps else "error",
         f1(mlflow_rps) if mlflow_rps else "error", "≥ 10× MLflow",
         _within(ratio, BUDGET["http_ratio"], smaller_is_better=False) + (f" ({fx(ratio)})" if ratio else "")),
        ("  reference: bare FastAPI under uvicorn, req/s", f1(bare_rps) if bare_rps else "error", "", "", ""),
        ("server RSS after warm-up, MB", f1(http["ours"].get("rss_mb", 0.0)),
         f1(http["mlflow"]["rss_mb"]) if "rss_mb" in http["mlflow"] else "error", "≤ 150",
         _within(http["ours"].get("rss_mb"), BUDGET["rss_mb"])),
        ("handler process RSS after warm-up, MB", f1(ours_warm["rss_mb"]), f1(mlflow_warm["rss_mb"]), "≤ 150",
         _within(ours_warm["rss_mb"], BUDGET["rss_mb"])),
        ("  model artifact (model.npz, with intervals), MB", f3(model.get("artifact_mb", 0.0)), "", "", ""),
        ("warm 1 row ?interval=0.8 p50, ms", f3(one["handler_interval"]["p50_ms"]), "", "", ""),
        ("warm 1 row ?explain=true p50, ms", f3(one["handler_explain"]["p50_ms"]), "", "", ""),
        ("warm 1,000 rows ?interval=0.8 p50, ms", f3(batch["handler_interval"]["p50_ms"]), "", "", ""),
        ("warm 1,000 rows ?explain=true p50, ms", f3(batch["handler_explain"]["p50_ms"]), "", "", ""),
        ("  interval: added per row, µs (one row / in 1,000)",
         f"{per_row_us['interval_one_row']:.0f} / {per_row_us['interval_in_batch']:.1f}", "", "", ""),
        ("  explain: added per row, µs (one row / in 1,000)",
         f"{per_row_us['explain_one_row']:.0f} / {per_row_us['explain_in_batch']:.1f}", "", "", ""),
        ("  interval holdout coverage at 0.5 / 0.8 / 0.9 / 0.95",
         " / ".join(f"{coverage[k]:.3f}" for k in ("0.5", "0.8", "0.9", "0.95")) if coverage else "n/a", "",
         "0.8: 0.77-0.83", _within(abs(coverage["0.8"] - 0.8), 0.03) if coverage else "n/a"),
    ]  # fmt: skip
    print_table(
        f"serving: Lambda handler vs MLflow, same LightGBM model ({model['n_trees']} trees, depth "
        f"{model['max_depth']}); python {Path(python).name}",
        [("", "ours", "MLflow", "budget", "within"), *table],
    )
    print_table(
        "where the cold start goes (layer, .pyc; -X importtime self time by top-level package, median), s",
        [
            ("", "ours", "bare app", "ours adds"),
            *(
                (name, f3(seconds), f3(floor_imports.get(name, 0.0)), f3(added[name]))
                for name, seconds in list(imports.items())[:24]
            ),
        ],
    )
    write_result(
        "serve",
        {
            "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": model,
            "python_for_serving": subprocess.run([python, "-V"], capture_output=True, text=True, check=True).stdout,
            "sizes": sizes,
            "cold_start_s": {k: {"median": med[k], "runs": v} for k, v in cold.items()},
            "cold_start_imports_s": {"ours": imports, "bare_app": floor_imports, "ours_adds": added},
            "warm": {"ours_handler": ours_warm, "mlflow_pyfunc": mlflow_warm},
            "http": http,
            "budgets": BUDGET,
            "ours_share_of_figure": ours_share,
            "option_cost_per_row_us": per_row_us,
            "machine_slowdown_vs_design_anchor": slowdown,
            "table": [dict(zip(("what", "ours", "mlflow", "budget", "within"), row, strict=True)) for row in table],
        },
    )


if __name__ == "__main__":
    main()
