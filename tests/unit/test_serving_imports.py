"""The API function's cold start, held by its import graph, not by a clock.

In the style of Powertools' own import-time performance test: a fresh interpreter imports the
handler module the way the Lambda runtime does (``functions/api`` first on ``sys.path``, then the
pricepipe package layer as ``cdk synth`` stages it, contracts compiled to JSON included, then the
installed dependencies; no ``site`` processing, as ``/opt/python`` gets none), and every top-level
package it then holds in ``sys.modules`` must be on :data:`ALLOWED`, each with the reason it is
there; none of :data:`FORBIDDEN` may be loaded. A new import on the serving path, direct or pulled in
by a dependency, fails here until it is either removed or added with its reason, so the cold start
(DESIGN §5; ``make bench-serve`` measures it) cannot grow unnoticed. The standard library is not
listed: it is in the runtime, compiled, and what it costs shows in the benchmark's breakdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from infrastructure import layers
from pricepipe.contract import bundled_contracts, load_contract

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_DIR = ROOT / "functions" / "api"
PACKAGE_DIR = ROOT / "layers" / "pricepipe" / "pricepipe"

# Top-level packages the serving function may import at cold start, and why.
ALLOWED = {
    "app": "the handler module itself (functions/api/app.py)",
    "pricepipe": "the shared package: contract, settings, request models, the lean model evaluator",
    "fastapi": "the API (routes, validation errors, the OpenAPI document)",
    "starlette": "FastAPI's ASGI toolkit",
    "pydantic": "the contract and the request models are pydantic models",
    "pydantic_core": "pydantic's compiled validators",
    "annotated_types": "pydantic's constraint types (Field(ge=...))",
    "typing_extensions": "pydantic's and FastAPI's typing backports",
    "typing_inspection": "pydantic's introspection of annotations",
    "annotated_doc": "FastAPI's parameter documentation annotations (a FastAPI dependency)",
    "opentelemetry": "FastAPI imports the OpenTelemetry API at import; the app turns its telemetry off",
    "anyio": "Starlette's async runtime (Request.body, the middleware)",
    "sniffio": "anyio's event-loop detection",
    "idna": "anyio's hostname encoding, imported with it",
    "mangum": "the API Gateway event <-> ASGI adapter",
    "numpy": "the lean model's arrays and tree evaluation",
    "orjson": "request parsing and response and log encoding",
    "aws_lambda_powertools": "the structured logger (prediction log) and the cold-start metric",
    "jmespath": "Powertools' logger imports its JMESPath utilities",
    "botocore": "Powertools' package init imports botocore (in the Lambda runtime) to tag the SDK's user agent;"
    " its submodules stay out (FORBIDDEN)",
    "snapshot_restore_py": "AWS's SnapStart runtime hooks, in the Lambda runtime (pricepipe.serving.snapshot)",
}
# Modules never on the serving path, whatever else changes: each was once imported at cold start or
# is easy to pull in by accident, and none of them is needed to answer a request.
FORBIDDEN = (
    "yaml",  # the contract: compiled to JSON at build time (pricepipe.contract.compile_contract)
    "pydantic_settings",  # the settings
    "dotenv",  # pydantic-settings' .env support
    "botocore.exceptions",  # botocore's package init is Powertools'; nothing more of the SDK at cold start
    "botocore.session",
    "boto3",  # only for a contract kept in S3 (functions/api/app.py)
    "pandas",
    "pyarrow",
    "mlflow",
    "sklearn",
    "prometheus_client",  # imported when /metrics is first read
)


def _import_like_lambda(package_layer: Path) -> dict[str, object]:
    """What a fresh interpreter holds after importing the handler module as the runtime does."""
    path = [
        str(FUNCTION_DIR),
        str(package_layer),
        *{sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]},
    ]
    probe = (
        "import json, sys\n"
        f"sys.path[:0] = {path!r}\n"
        "import app\n"
        "try:\n"
        "    from snapshot_restore_py import get_after_restore\n"
        "    hooks = [f'{fn.__module__}.{fn.__qualname__}' for fn, _, _ in get_after_restore()]\n"
        "except ImportError:\n"
        "    hooks = None\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'after_restore': hooks}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRICEPIPE_", "AWS_"))}
    env.update(POWERTOOLS_SERVICE_NAME="pricepipe-api", AWS_LAMBDA_FUNCTION_VERSION="1", AWS_REGION="us-east-1")
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, env=env, cwd=FUNCTION_DIR, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def package_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pricepipe layer's ``python/`` folder as synth stages it (sources only: no bytecode needed here)."""
    return layers.stage_package_layer(PACKAGE_DIR, tmp_path_factory.mktemp("layers"), bytecode=None) / "python"


@pytest.fixture(scope="module")
def imported(package_layer: Path) -> dict[str, object]:
    return _import_like_lambda(package_layer)


def _top_level(modules: object) -> set[str]:
    assert isinstance(modules, list)
    names = {str(name).split(".")[0] for name in modules}
    # _sysconfigdata_*: the standard library's build data, loaded by sysconfig (zoneinfo, via pydantic)
    stdlib = {name for name in names if name in sys.stdlib_module_names or name.startswith("_sysconfigdata")}
    return names - stdlib - {"__main__"}


def test_given_the_handler_imported_like_lambda_then_every_package_it_pulls_in_is_allowed(
    imported: dict[str, object],
) -> None:
    unexpected = sorted(_top_level(imported["modules"]) - set(ALLOWED))
    assert not unexpected, (
        f"the serving function now imports {unexpected} at cold start: remove the import from the serving "
        "path, or add each to ALLOWED in this file with the reason it is needed"
    )


def test_given_the_handler_imported_like_lambda_then_none_of_the_forbidden_modules_is_loaded(
    imported: dict[str, object],
) -> None:
    loaded = _top_level(imported["modules"]) | {str(m) for m in imported["modules"]}  # type: ignore[union-attr]
    assert not [name for name in FORBIDDEN if name in loaded]


def test_given_the_allowed_list_then_it_names_no_forbidden_module_and_the_handler_really_loads(
    imported: dict[str, object],
) -> None:
    assert not set(FORBIDDEN) & set(ALLOWED)
    assert {"app", "pricepipe", "fastapi", "mangum", "numpy"} <= _top_level(imported["modules"])


def test_given_awss_hooks_library_then_the_app_reseeds_its_generators_after_each_restore(
    imported: dict[str, object],
) -> None:
    # snapshot_restore_py: in the Lambda runtime, and pinned in requirements-dev.txt for this test
    assert imported["after_restore"] == ["pricepipe.serving.snapshot.reseed"]


def test_given_the_staged_layer_then_each_bundled_contract_is_compiled_to_the_same_contract(
    package_layer: Path,
) -> None:
    names = bundled_contracts()
    assert names and sorted(p.stem for p in (package_layer / "pricepipe" / "contracts").glob("*.json")) == names
    probe = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(package_layer)!r})\n"
        "from pricepipe.contract import load_contract\n"
        f"print(json.dumps({{n: load_contract(n).model_dump(mode='json') for n in {names!r}}}))\n"
        "assert 'yaml' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    from_layer = json.loads(done.stdout)
    assert from_layer == {name: load_contract(name).model_dump(mode="json") for name in names}
