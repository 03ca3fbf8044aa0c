"""Probe: the floor the issue's stack sets, fresh process → first answer: a bare FastAPI app through
Mangum answering the same kind of event, with numpy imported (the model needs it).

    python floor_app.py
"""

import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.probes import _shared
else:
    import _shared  # run by path: this folder leads sys.path

BEGAN = time.perf_counter()


def main() -> None:
    import numpy  # noqa: F401 - imported for its cost: the model needs it
    from mangum import Mangum

    handler = Mangum(_shared.bare_app(), lifespan="off")
    assert handler(_shared.api_event({"x": 1}), None)["statusCode"] == 200  # type: ignore[arg-type]  # no context read
    print(json.dumps({"first_answer_in_process_s": time.perf_counter() - BEGAN, "answered_at": time.time()}))


if __name__ == "__main__":
    main()
