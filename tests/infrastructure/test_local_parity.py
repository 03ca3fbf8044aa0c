"""The local cloud's functions are configured as the synthesized templates configure them.

For every catalog function: handler, runtime, description, memory, timeout, reserved concurrency,
the layers by name in their order, the environment's variable names, and the values of every
variable the template gives as a plain string. Values the template computes (bucket names holding
the account, the database secret's ARN) differ by nature between the two clouds: of those, the
names are compared, and that they are exactly the variables expected to differ.

The local side is provisioned in-process on moto, as ``pipectl local up`` provisions it, with the
deploy configuration the synthesized app was built with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from infrastructure import catalog
from infrastructure.stacks.config import DeployConfig
from pipectl.localcloud import LocalCloud
from pipectl.localcloud.provision import provision
from tests.infrastructure.support import of_type

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
# Variables whose values are computed by the deployment (ARNs, names holding the account)
BY_NATURE = frozenset(
    {
        "PRICEPIPE_LANDING_BUCKET",
        "PRICEPIPE_LAKE_BUCKET",
        "PRICEPIPE_ARTIFACTS_BUCKET",
        "PRICEPIPE_DATABASE_SECRET_ARN",
    }
)
LAYER_IN_ARN = re.compile(r":layer:([^:]+):")


@dataclass(frozen=True)
class Configuration:
    """What the parity is about, as both sides report it."""

    handler: str
    runtime: str
    description: str
    memory_mb: int
    timeout_s: int
    reserved_concurrency: int | None
    layers: tuple[str, ...]
    environment: dict[str, Any]  # a template's computed values are CloudFormation intrinsics


def _layer_name(synthesized: Synthesized, resources: Resources, layer: Any) -> str:
    """A template's layer reference as the layer's name: a layer of the same stack, one of another
    stack (a stack output), or an ARN built from parts (AWS's managed layer)."""
    if isinstance(layer, dict) and "Ref" in layer:
        return str(resources[layer["Ref"]]["Properties"]["LayerName"])
    if isinstance(layer, dict) and "Fn::GetStackOutput" in layer:
        reference = layer["Fn::GetStackOutput"]
        producer = synthesized.raw_template(reference["StackName"])
        logical_id = producer["Outputs"][reference["OutputName"]]["Value"]["Ref"]
        return str(producer["Resources"][logical_id]["Properties"]["LayerName"])
    found = LAYER_IN_ARN.search(layer if isinstance(layer, str) else "".join(_strings(layer)))
    assert found, f"no layer name in {layer}"
    return found.group(1)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return ["{token}"]


def _synthesized_configurations(
    synthesized: Synthesized, resources_of: Callable[[catalog.FunctionSpec], Resources]
) -> dict[str, Configuration]:
    found = {}
    for spec in catalog.FUNCTIONS:
        resources = resources_of(spec)
        (props,) = [
            r["Properties"]
            for r in of_type(resources, "AWS::Lambda::Function").values()
            if r["Properties"].get("FunctionName") == spec.name
        ]
        found[spec.key] = Configuration(
            handler=props["Handler"],
            runtime=props["Runtime"],
            description=props["Description"],
            memory_mb=int(props["MemorySize"]),
            timeout_s=int(props["Timeout"]),
            reserved_concurrency=props.get("ReservedConcurrentExecutions"),
            layers=tuple(_layer_name(synthesized, resources, layer) for layer in props.get("Layers", [])),
            environment=dict(props.get("Environment", {}).get("Variables", {})),
        )
    return found


def _local_configurations(cloud: LocalCloud, config: DeployConfig) -> dict[str, Configuration]:
    provision(cloud, "postgresql://parity@127.0.0.1/unused", contract=config.contract, stage=config.stage)
    lam = cloud.client("lambda")
    found = {}
    for spec in catalog.FUNCTIONS:
        function = lam.get_function(FunctionName=spec.name)
        conf = function["Configuration"]
        layers = tuple(_name_of_arn(layer["Arn"]) for layer in conf.get("Layers", []))
        found[spec.key] = Configuration(
            handler=conf["Handler"],
            runtime=conf["Runtime"],
            description=conf["Description"],
            memory_mb=conf["MemorySize"],
            timeout_s=conf["Timeout"],
            reserved_concurrency=function.get("Concurrency", {}).get("ReservedConcurrentExecutions"),
            layers=layers,
            environment=dict(conf.get("Environment", {}).get("Variables", {})),
        )
    return found


def _name_of_arn(arn: str) -> str:
    found = LAYER_IN_ARN.search(arn)
    assert found, arn
    return found.group(1)


@pytest.fixture(scope="module")
def both(
    synthesized: Synthesized,
    resources_of: Callable[[catalog.FunctionSpec], Resources],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Configuration], dict[str, Configuration]]:
    config = DeployConfig.from_context(synthesized.app.node)
    with LocalCloud(Path(tmp_path_factory.mktemp("parity"))) as cloud:
        local = _local_configurations(cloud, config)
    return _synthesized_configurations(synthesized, resources_of), local


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_function_then_the_local_cloud_configures_it_as_the_template_does(
    spec: catalog.FunctionSpec, both: tuple[dict[str, Configuration], dict[str, Configuration]]
) -> None:
    synthesized, local = (side[spec.key] for side in both)
    assert local.environment.keys() == synthesized.environment.keys()
    computed = {name for name, value in synthesized.environment.items() if not isinstance(value, str)}
    assert computed <= BY_NATURE, f"{spec.name}: computed values not expected to differ: {computed - BY_NATURE}"
    plain = {name: value for name, value in synthesized.environment.items() if name not in computed}
    assert {name: local.environment[name] for name in plain} == plain
    # the rest, field by field, with the environment's comparison done above
    assert {**local.__dict__, "environment": None} == {**synthesized.__dict__, "environment": None}


def test_given_the_catalog_then_both_sides_attach_its_layers_and_every_kind_of_function_is_compared(
    both: tuple[dict[str, Configuration], dict[str, Configuration]],
) -> None:
    """The parity is by construction (both sides read catalog.function_layers); this checks that it
    covers the cases that differ: the managed pandas layer, our numpy, MLflow's, the serving layer."""
    synthesized, local = both
    for spec in catalog.FUNCTIONS:
        assert local[spec.key].layers == synthesized[spec.key].layers == catalog.function_layers(spec)
    attached = {name for configuration in local.values() for name in configuration.layers}
    assert attached == {
        catalog.PANDAS_LAYER,
        catalog.NUMPY_LAYER,
        catalog.DEPS_LAYER,
        catalog.MLFLOW_LAYER,
        catalog.PACKAGE_LAYER,
        catalog.SERVING_LAYER,
    }
