"""What each deployed function carries: code + layers within Lambda's limits, and a handler that imports
with exactly those layers (and the runtime's AWS SDK) on CPython 3.12, as Lambda would run it."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from infrastructure import catalog, layers
from infrastructure.stacks import PIPELINE_STACK, SERVING_STACK

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
MB = 2**20
LAMBDA_LIMIT_MB = 250  # code + layers, unzipped, for every function
SERVING_BUDGET_MB = 100  # DESIGN §5: the serving function's code + layers


# The AWS SDK for pandas layer counts as measured from a build of its pins, trimmed as AWS trims it:
# an upper bound of AWS's layer (layers.managed_pandas_layer_bytes).
@functools.cache
def pandas_layer_mb() -> float:
    return layers.managed_pandas_layer_bytes() / MB


# A model layer version holds the lean artifact (~0.1 MB for the demo model; pricepipe.settings
# max_tree_levels bounds it) and its metadata: what the no-model layer is replaced by.
MODEL_LAYER_ALLOWANCE_MB = 5
# What the python3.12 runtime already has on its path (Lambda's /var/runtime and /var/lang).
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")
BYTECODE = layers.bytecode_interpreter()


@dataclass(frozen=True)
class Deployed:
    """A catalog function as synthesized: its code directory and the directories of its layers."""

    spec: catalog.FunctionSpec
    code: Path
    layers: tuple[Path, ...]  # our layers' python/ folders, in extraction order
    managed_pandas: bool
    carries_model: bool

    def size_mb(self) -> float:
        own = _unzipped_bytes(self.code) + sum(_unzipped_bytes(p) for p in self.layers)
        return (
            own / MB
            + (pandas_layer_mb() if self.managed_pandas else 0)
            + (MODEL_LAYER_ALLOWANCE_MB if self.carries_model else 0)
        )


@functools.cache
def _unzipped_bytes(directory: Path) -> int:
    return layers.unzipped_bytes(directory)  # a layer is shared by many functions: measure it once


def _asset(synthesized: Synthesized, resource: dict[str, Any], key: str) -> Path:
    return synthesized.asset_path(resource["Properties"][key]["S3Key"])


@pytest.fixture(scope="module")
def deployed(synthesized: Synthesized) -> dict[str, Deployed]:
    templates = {name: synthesized.raw_template(name) for name in (PIPELINE_STACK, SERVING_STACK)}
    pipeline = templates[PIPELINE_STACK]
    (no_model,) = [
        r
        for r in pipeline["Resources"].values()
        if r["Type"] == "AWS::Lambda::LayerVersion" and r["Properties"]["LayerName"] == catalog.MODEL_LAYER
    ]
    found = {}
    for template in templates.values():
        resources = template["Resources"]
        for resource in resources.values():
            props = resource["Properties"]
            spec = next((f for f in catalog.FUNCTIONS if props.get("FunctionName") == f.name), None)
            if resource["Type"] != "AWS::Lambda::Function" or spec is None:
                continue
            dirs, managed = [], False
            for layer in props["Layers"]:
                if "Ref" in layer:
                    dirs.append(_asset(synthesized, resources[layer["Ref"]], "Content") / "python")
                elif "Fn::GetStackOutput" in layer:
                    reference = layer["Fn::GetStackOutput"]
                    producer = templates[reference["StackName"]]
                    logical_id = producer["Outputs"][reference["OutputName"]]["Value"]["Ref"]
                    dirs.append(_asset(synthesized, producer["Resources"][logical_id], "Content") / "python")
                else:
                    managed = True
            # the promotion flow attaches the serving function's model layer last (deployer.with_model_layer)
            model = spec.key == catalog.SERVING_FUNCTION
            if model:
                dirs.append(_asset(synthesized, no_model, "Content") / "python")
            found[spec.key] = Deployed(spec, _asset(synthesized, resource, "Code"), tuple(dirs), managed, model)
    assert set(found) == {f.key for f in catalog.FUNCTIONS}
    return found


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_function_then_its_code_and_layers_unzipped_fit_lambdas_250_mb(
    spec: catalog.FunctionSpec, deployed: dict[str, Deployed]
) -> None:
    function = deployed[spec.key]
    size = function.size_mb()
    assert size <= LAMBDA_LIMIT_MB, (
        f"{spec.name}: {size:.1f} MB (managed pandas layer counted as {pandas_layer_mb():.1f} MB)"
        if function.managed_pandas
        else f"{spec.name}: {size:.1f} MB"
    )


def test_given_the_serving_function_then_its_code_and_layers_stay_within_the_100_mb_budget(
    deployed: dict[str, Deployed],
) -> None:
    api = deployed[catalog.SERVING_FUNCTION]
    assert not api.managed_pandas
    assert api.carries_model
    size = api.size_mb()
    assert size <= SERVING_BUDGET_MB, f"{api.spec.name}: {size:.1f} MB with a {MODEL_LAYER_ALLOWANCE_MB} MB model"


def test_given_the_serving_function_then_it_carries_swagger_uis_files_for_an_offline_docs_page(
    deployed: dict[str, Deployed],
) -> None:
    from pricepipe.serving import docs

    api = deployed[catalog.SERVING_FUNCTION]
    folders = [layer / "pricepipe" / "serving" / "swagger_ui" for layer in api.layers]
    shipped = next((folder for folder in folders if folder.is_dir()), None)
    assert shipped is not None, f"no pricepipe/serving/swagger_ui in the layers: {docs.INSTALL_HINT}"
    assert {p.name for p in shipped.iterdir()} >= {*docs.ASSETS, "LICENSE"}
    for name in docs.ASSETS:
        assert (shipped / name).read_bytes() == (docs.ASSET_DIR / name).read_bytes()


def _runtime_path(directory: Path) -> Path:
    """A folder holding only the AWS SDK the python3.12 runtime provides (pure Python, from this venv)."""
    directory.mkdir(parents=True, exist_ok=True)
    for module in RUNTIME_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (directory / source.name).symlink_to(source)
    return directory


IMPORT_PROBE = """
import importlib, json, sys
sys.path[:0] = {path}
found = {{}}
for module, names in {handlers}.items():
    loaded = importlib.import_module(module)
    found[module] = [name for name in names if not callable(getattr(loaded, name, None))]
if {registry}:
    from mlflow import MlflowClient  # what pricepipe.registry.client_for opens, over the SQL store
    import alembic, sqlalchemy.dialects.postgresql.psycopg
heavy = sorted(m for m in ("pandas", "pyarrow", "mlflow", "sklearn", "lightgbm") if m in sys.modules)
print(json.dumps({{"missing": found, "heavy": heavy}}))
"""


@pytest.mark.skipif(BYTECODE is None, reason=f"no CPython {layers.PYTHON_VERSION} to import the handlers with")
def test_given_each_function_without_the_managed_layer_then_its_handler_imports_with_exactly_its_layers(
    deployed: dict[str, Deployed], tmp_path: Path
) -> None:
    """One fresh CPython 3.12 per distinct (code, layers): sys.path as Lambda builds it, nothing else.

    Functions with the AWS SDK for pandas layer are left out: that layer is AWS's, not available here.
    """
    assert BYTECODE is not None
    runtime = _runtime_path(tmp_path / "runtime")
    groups: dict[tuple[Path, tuple[Path, ...]], list[Deployed]] = {}
    for function in deployed.values():
        if not function.managed_pandas:
            groups.setdefault((function.code, function.layers), []).append(function)
    processes = []
    for (code, layer_dirs), functions in groups.items():
        handlers: dict[str, list[str]] = {}
        for function in functions:
            module, name = function.spec.handler.rsplit(".", 1)
            handlers.setdefault(module, []).append(name)
        # a later layer's files win, so it comes first on the path (as /opt/python holds the last one's)
        path = [str(code), *(str(d) for d in reversed(layer_dirs)), str(runtime)]
        registry = any((d / "mlflow").is_dir() for d in layer_dirs)
        script = IMPORT_PROBE.format(path=path, handlers=handlers, registry=registry)
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "POWERTOOLS_SERVICE_NAME": functions[0].spec.name,
            "POWERTOOLS_METRICS_NAMESPACE": "PricePipeline",
            "PRICEPIPE_STAGE": "dev",
            "PRICEPIPE_CONTRACT": "hotel_rates",
        }
        command = [str(BYTECODE.python), "-I", "-c", script]
        process = subprocess.Popen(
            command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        processes.append(([f.spec.key for f in functions], registry, process))
    failures = []
    for keys, registry, process in processes:
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(f"{keys}: {err.strip()[-1500:]}")
            continue
        result = json.loads(out.strip().splitlines()[-1])
        missing = {module: names for module, names in result["missing"].items() if names}
        if missing:
            failures.append(f"{keys}: handlers not found {missing}")
        if not registry and result["heavy"]:
            failures.append(f"{keys}: imports {result['heavy']} at cold start")
    assert failures == []
    assert {key for group in groups.values() for f in group for key in [f.spec.key]} >= {
        catalog.SERVING_FUNCTION,
        "prediction-writer",
        "promotion-prepare",
        "promotion-deploy",
    }
