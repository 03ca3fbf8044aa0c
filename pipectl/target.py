"""Where commands act: the local cloud (from its state file) or a deployed stack (from its outputs).

Both resolve to the same :class:`Target`, so every command runs unchanged against either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from infrastructure import catalog

DEFAULT_STATE_DIR = Path(os.environ.get("PIPECTL_STATE_DIR", ".localcloud"))


class TargetUnavailable(Exception):
    """The target cannot be reached; the message says what to do."""


@dataclass
class Target:
    kind: str  # "local" | "aws"
    region: str
    landing_bucket: str
    lake_bucket: str
    artifacts_bucket: str
    state_machines: dict[str, str] = field(default_factory=dict)  # key -> ARN
    functions: dict[str, str] = field(default_factory=dict)  # key -> name or ARN
    endpoint: str | None = None
    database_url: str | None = None  # reachable from here (local only; RDS is private)
    api_url: str | None = None  # the prediction API (local: the gateway in front of the live alias)
    api_key: str | None = None
    # OAuth2: the API clients' user pool, its token endpoint and the first app client (id and secret)
    user_pool_id: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    dataset: str = "hotel_rates"  # the deployed contract's name: where `pipectl land --file` puts files

    def client(self, service: str) -> Any:
        config = Config(retries={"mode": "standard"}, read_timeout=900)
        if self.endpoint is None:
            return boto3.client(service, region_name=self.region, config=config)
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the local cloud accepts any credentials
            config=config,
        )


def local_target(state_dir: Path = DEFAULT_STATE_DIR) -> Target:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        raise TargetUnavailable("the local cloud is not running: start it with `pipectl local up`")
    state = json.loads(state_file.read_text())
    if not _alive(int(state["pid"])):
        raise TargetUnavailable("the local cloud's process has exited: run `pipectl local up` again")
    return target_from_state(state)


def target_from_state(state: Mapping[str, Any]) -> Target:
    """A local cloud's target from its resources as ``state.json`` holds them (``Resources.to_dict()``)."""
    return Target(
        kind="local",
        region=state["region"],
        landing_bucket=state["landing_bucket"],
        lake_bucket=state["lake_bucket"],
        artifacts_bucket=state["artifacts_bucket"],
        state_machines=state["state_machines"],
        functions=state["functions"],
        endpoint=state["endpoint"],
        database_url=state["database_url"],
        api_url=state.get("gateway_url") or None,
        api_key=state.get("api_key") or None,
        user_pool_id=state.get("user_pool_id") or None,
        token_url=state.get("token_url") or None,
        client_id=state.get("client_id") or None,
        client_secret=state.get("client_secret") or None,
        dataset=state.get("dataset") or state["contract"],
    )


def aws_target(region: str | None = None) -> Target:
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise TargetUnavailable("set AWS_REGION (or AWS_DEFAULT_REGION) to the region the stacks are deployed in")
    cfn = boto3.client("cloudformation", region_name=region)
    outputs: dict[str, str] = {}
    for stack in (catalog.DATA_STACK, catalog.PIPELINE_STACK, catalog.SERVING_STACK):
        try:
            described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        except Exception as exc:
            raise TargetUnavailable(
                f"stack {stack} not found in {region}: deploy it with `npx cdk deploy --all`"
            ) from exc
        outputs.update({o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])})
    functions = {
        f.key: outputs[catalog.function_output(f)] for f in catalog.FUNCTIONS if catalog.function_output(f) in outputs
    }
    machines = {
        m.key: outputs[catalog.state_machine_output(m)]
        for m in catalog.STATE_MACHINES
        if catalog.state_machine_output(m) in outputs
    }
    api_key = None
    if outputs.get("ApiKeyId"):  # the stack outputs the key's id, never its value
        api_key = boto3.client("apigateway", region_name=region).get_api_key(
            apiKey=outputs["ApiKeyId"], includeValue=True
        )["value"]
    pool, client_id, client_secret = outputs.get("UserPoolId"), outputs.get("DefaultClientId"), None
    if pool and client_id:  # the stack outputs the client's id, never its secret
        client_secret = boto3.client("cognito-idp", region_name=region).describe_user_pool_client(
            UserPoolId=pool, ClientId=client_id
        )["UserPoolClient"]["ClientSecret"]
    return Target(
        kind="aws",
        region=region,
        landing_bucket=outputs["LandingBucketName"],
        lake_bucket=outputs["LakeBucketName"],
        artifacts_bucket=outputs["ArtifactsBucketName"],
        state_machines=machines,
        functions=functions,
        api_url=outputs.get("ApiUrl", "").rstrip("/") or None,
        api_key=api_key,
        user_pool_id=pool,
        token_url=outputs.get("TokenUrl") or None,
        client_id=client_id,
        client_secret=client_secret,
        dataset=outputs.get("DatasetName") or "hotel_rates",
    )


def resolve(kind: str, state_dir: Path = DEFAULT_STATE_DIR) -> Target:
    if kind == "local":
        return local_target(state_dir)
    if kind == "aws":
        return aws_target()
    raise TargetUnavailable(f"unknown target {kind!r}: use 'local' or 'aws'")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
