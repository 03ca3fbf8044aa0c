"""`pipectl --target aws` finds the deployed stacks' resources from their outputs."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from infrastructure import catalog
from pipectl.target import TargetUnavailable, aws_target


def stack(cfn, name: str, outputs: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    template = {
        "Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))


@mock_aws
def test_the_aws_target_reads_buckets_flows_functions_and_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    cfn = boto3.client("cloudformation", region_name="eu-west-1")
    key = boto3.client("apigateway", region_name="eu-west-1").create_api_key(
        name="k", enabled=True, value="s3cr3t-key-0123456789"
    )
    stack(cfn, catalog.DATA_STACK, {"LandingBucketName": "l", "LakeBucketName": "k", "ArtifactsBucketName": "a"})
    etl = catalog.state_machine("etl")
    load = catalog.function("etl-load")
    stack(
        cfn,
        catalog.PIPELINE_STACK,
        {catalog.state_machine_output(etl): "arn:etl", catalog.function_output(load): "fn-load"},
    )
    stack(cfn, catalog.SERVING_STACK, {"ApiUrl": "https://api.example/v1/", "ApiKeyId": key["id"]})
    target = aws_target()
    assert (target.landing_bucket, target.lake_bucket, target.artifacts_bucket) == ("l", "k", "a")
    assert target.state_machines == {"etl": "arn:etl"} and target.functions == {"etl-load": "fn-load"}
    assert target.api_url == "https://api.example/v1" and target.api_key == "s3cr3t-key-0123456789"
    assert target.endpoint is None and target.database_url is None


@mock_aws
def test_a_missing_stack_says_how_to_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with pytest.raises(TargetUnavailable, match="cdk deploy"):
        aws_target()
