"""Probe: MLflow's own serving path, ``mlflow.pyfunc.load_model`` + ``predict``, in a fresh process.

    python pyfunc.py MODEL_PATH FEATURES_PICKLE cold|warm

Prints when the first prediction came (``answered_at``) and, with ``warm``, one-row and 1,000-row
``predict`` latencies and the resident memory after them.
"""

import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.probes import _shared
else:
    import _shared  # run by path: this folder leads sys.path

BEGAN = time.perf_counter()


def main() -> None:
    model_path, frame_file, mode = sys.argv[1:4]
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_path)
    frame = pd.read_pickle(frame_file)  # the feature frame with its dtypes, as the model's signature has them
    model.predict(frame.head(1))
    out: dict[str, Any] = {"first_answer_in_process_s": time.perf_counter() - BEGAN, "answered_at": time.time()}
    if mode == "warm":
        out["one_row"] = timings(model, frame.head(1), 2000)
        out["batch"] = timings(model, frame.head(1000), 200)
        out["rss_mb"] = _shared.resident_mb()
    print(json.dumps(out))


def timings(model: Any, rows: Any, n: int) -> dict[str, float]:
    for _ in range(max(10, n // 10)):
        model.predict(rows)
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        model.predict(rows)
        xs.append(time.perf_counter() - t)
    return _shared.percentiles(xs)


if __name__ == "__main__":
    main()
