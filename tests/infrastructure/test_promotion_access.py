"""What each promotion step may do to the serving function: exactly what its code calls.

The table is the specification (written from functions/promotion/handler.py over the pricepipe.promotion
package and its AWS adapters), kept apart from infrastructure/stacks/serving_access.py on
purpose: a change there must be a change here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from infrastructure import catalog
from infrastructure.stacks import layer_names
from tests.infrastructure.support import as_list, of_type, statements_of_role

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
API = catalog.function(catalog.SERVING_FUNCTION).name
FUNCTION = f":function:{API}"
VERSIONS = f":function:{API}:*"
ALIAS = f":function:{API}:{catalog.LIVE_ALIAS}"
PARAMETER = f":parameter{catalog.MODEL_LAYER_PARAMETER}"
PROMOTIONS = f":execution:{catalog.state_machine('promotion').name}:*"

MOVE_ALIAS = {("lambda:GetAlias", ALIAS), ("lambda:UpdateAlias", ALIAS)}
INSPECT = {("lambda:GetFunctionConfiguration", FUNCTION), ("lambda:GetFunctionConfiguration", VERSIONS)}
DEPLOY = (
    {
        (action, resource)
        for action in (
            "lambda:GetFunctionConfiguration",
            "lambda:UpdateFunctionConfiguration",
            "lambda:PublishVersion",
            "lambda:ListVersionsByFunction",
        )
        for resource in (FUNCTION, VERSIONS)
    }
    | {("lambda:PublishLayerVersion", f":layer:{layer_names.MODEL}")}
    # UpdateFunctionConfiguration needs GetLayerVersion on every layer in the list, not only the model's
    | {
        ("lambda:GetLayerVersion", f":layer:{name}:*")
        for name in (layer_names.MODEL, layer_names.SERVING, layer_names.PACKAGE)
    }
)
PARAMETER_ACCESS = {(action, PARAMETER) for action in ("ssm:GetParameter", "ssm:PutParameter", "ssm:DeleteParameter")}
DESCRIBE_PROMOTIONS = {("states:DescribeExecution", PROMOTIONS)}

EXPECTED: dict[str, set[tuple[str, str]]] = {
    "promotion-prepare": MOVE_ALIAS | INSPECT | DESCRIBE_PROMOTIONS,
    "promotion-gate": set(),
    "promotion-deploy": DEPLOY,
    "promotion-request-approval": set(),
    "promotion-start-canary": MOVE_ALIAS,
    "promotion-check-canary": {("cloudwatch:GetMetricData", "*")},
    "promotion-finalize": MOVE_ALIAS | PARAMETER_ACCESS,
    "promotion-abandon": MOVE_ALIAS,
    # rollback also refuses while a promotion runs (promotion.stepfunctions.execution_status): DescribeExecution
    "promotion-command": DEPLOY
    | MOVE_ALIAS
    | PARAMETER_ACCESS
    | DESCRIBE_PROMOTIONS
    | {("states:SendTaskSuccess", "*"), ("states:SendTaskFailure", "*")},
}
SERVICES = ("lambda:", "ssm:", "states:", "cloudwatch:")


def _role(resources: Resources, spec: catalog.FunctionSpec) -> str:
    (function,) = [
        r
        for r in of_type(resources, "AWS::Lambda::Function").values()
        if r["Properties"].get("FunctionName") == spec.name
    ]
    return str(function["Properties"]["Role"]["Fn::GetAtt"][0])


def _where(resource: Any) -> str:
    """A statement resource as the tail of its ARN (``:function:pricepipe-api:live``) or ``*``."""
    if resource == "*":
        return "*"
    parts = resource["Fn::Join"][1]
    assert all(isinstance(p, str) or p.get("Ref", "").startswith("AWS::") for p in parts), (
        f"named, not referenced: {resource}"
    )
    return str(parts[-1])


def _granted(resources: Resources, role: str) -> set[tuple[str, str]]:
    return {
        (action, _where(resource))
        for statement in statements_of_role(resources, role)
        for action in as_list(statement["Action"])
        if action.startswith(SERVICES) and not action.startswith("logs:")
        for resource in as_list(statement["Resource"])
    }


def test_given_the_catalog_then_the_table_covers_every_promotion_function() -> None:
    assert set(EXPECTED) == {f.key for f in catalog.FUNCTIONS if f.folder == "promotion"}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_given_a_promotion_step_then_it_may_do_exactly_what_its_code_calls_on_the_serving_side(
    key: str, pipeline_resources: Resources
) -> None:
    spec = catalog.function(key)
    role = _role(pipeline_resources, spec)
    assert _granted(pipeline_resources, role) == EXPECTED[key]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_given_a_promotion_step_then_it_reads_the_database_secret_and_runs_in_the_vpc(
    key: str, pipeline_resources: Resources
) -> None:
    spec = catalog.function(key)
    assert spec.needs_database
    role = _role(pipeline_resources, spec)
    actions = {a for s in statements_of_role(pipeline_resources, role) for a in as_list(s["Action"])}
    assert "secretsmanager:GetSecretValue" in actions


def test_given_every_role_of_the_pipeline_then_none_has_a_service_wildcard_and_only_the_live_alias_is_updated(
    pipeline_resources: Resources,
) -> None:
    wildcards, alias_updates = [], []
    for name, policy in of_type(pipeline_resources, "AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = as_list(statement["Action"])
            wildcards += [(name, a) for a in actions if a.endswith(":*") or a == "*"]
            if "lambda:UpdateAlias" in actions:
                alias_updates += [_where(r) for r in as_list(statement["Resource"])]
    assert wildcards == []
    assert alias_updates
    assert set(alias_updates) == {ALIAS}


def test_given_the_serving_function_then_its_layers_are_the_ones_promotion_deploy_may_read(
    synthesized: Synthesized, serving_resources: Resources
) -> None:
    """Granted by name; the names must be the layers the function really carries."""
    (function,) = [
        r
        for r in of_type(serving_resources, "AWS::Lambda::Function").values()
        if r["Properties"].get("FunctionName") == API
    ]
    names = []
    for layer in function["Properties"]["Layers"]:
        if "Ref" in layer:
            names.append(serving_resources[layer["Ref"]]["Properties"]["LayerName"])
        else:
            reference = layer["Fn::GetStackOutput"]
            producer = synthesized.raw_template(reference["StackName"])
            logical_id = producer["Outputs"][reference["OutputName"]]["Value"]["Ref"]
            names.append(producer["Resources"][logical_id]["Properties"]["LayerName"])
    # the model layer comes last, attached by promotion-deploy (deployer.with_model_layer)
    assert [*names, layer_names.MODEL] == list(layer_names.SERVING_FUNCTION_LAYERS)


def test_given_the_settings_then_promotion_acts_on_the_names_the_stacks_deploy() -> None:
    from pricepipe.settings import Settings

    fields = Settings.model_fields
    assert fields["serving_function"].default == API
    assert fields["serving_alias"].default == catalog.LIVE_ALIAS
    assert fields["model_layer_name"].default == layer_names.MODEL
    assert fields["model_layer_parameter"].default == catalog.MODEL_LAYER_PARAMETER
