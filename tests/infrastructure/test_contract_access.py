"""A data contract kept in S3 (``pricepipe:contract=s3://bucket/key``): every function that loads it
at a cold start (the API included) may read that one object; a bundled contract grants nothing.

moto enforces no IAM, so only the template can show this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aws_cdk import Stack
from aws_cdk.assertions import Match, Template

from infrastructure import catalog
from infrastructure.stacks import SERVING_STACK, build_app
from tests.infrastructure.support import Resources, of_type, statements_of_role

pytestmark = pytest.mark.infra

API = catalog.function(catalog.SERVING_FUNCTION)
CONTRACT = "s3://team-contracts/pricing/hotel_rates.yaml"


def _api_role(resources: Resources) -> str:
    for resource in of_type(resources, "AWS::Lambda::Function").values():
        if resource["Properties"].get("FunctionName") == API.name:
            return str(resource["Properties"]["Role"]["Fn::GetAtt"][0])
    raise AssertionError(f"no function named {API.name}")


def _s3_statements(resources: Resources, role: str) -> list[dict[str, Any]]:
    return [s for s in statements_of_role(resources, role) if any(str(a).startswith("s3:") for a in _list(s["Action"]))]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_given_a_bundled_contract_then_the_api_role_has_no_s3_access(serving_resources: Resources) -> None:
    assert _s3_statements(serving_resources, _api_role(serving_resources)) == []


def test_given_an_s3_contract_then_the_api_role_reads_that_object_only(tmp_path: Path) -> None:
    with mock.patch.dict(os.environ, {}, clear=False) as env:
        env.pop("CDK_DEFAULT_ACCOUNT", None)
        env.pop("CDK_DEFAULT_REGION", None)
        app = build_app(outdir=str(tmp_path), context={"pricepipe:contract": CONTRACT})
        serving = app.node.find_child(SERVING_STACK)
        assert isinstance(serving, Stack)
        template = Template.from_stack(serving)

    resources: Resources = template.to_json()["Resources"]
    role = _api_role(resources)
    object_arn = {
        "Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":s3:::team-contracts/pricing/hotel_rates.yaml"]]
    }
    assert _s3_statements(resources, role) == [{"Action": "s3:GetObject", "Effect": "Allow", "Resource": object_arn}], (
        "the API reads the contract object and nothing else in S3"
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {"FunctionName": API.name, "Environment": {"Variables": Match.object_like({"PRICEPIPE_CONTRACT": CONTRACT})}},
    )
