"""moto in-process with the serving function as the stacks deploy it: for tests of promotion's AWS edge
and of the promotion steps below the local cloud."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pricepipe.promotion import deployer
from pricepipe.settings import get_settings

REGION = "us-east-1"
FUNCTION = "pricepipe-api"
ALIAS = "live"
MODEL_LAYER = "pricepipe-model"


def _zip(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, text)
    return buffer.getvalue()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def lam(aws: None) -> Any:
    """The serving function with a dependency layer and no model, version 1 published, ``live`` on it."""
    iam = boto3.client("iam", region_name=REGION)
    role = iam.create_role(
        RoleName="api",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    client = boto3.client("lambda", region_name=REGION)
    deps = _layer(client, "pricepipe-serving-deps", "deps")
    client.create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": _zip("app.py", "def handler(event, context):\n    return event\n")},
        Layers=[deps],
    )
    client.publish_version(FunctionName=FUNCTION, Description="pricepipe: no model deployed yet")
    client.create_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="1")
    return client


def _layer(lam: Any, name: str, description: str) -> str:
    published = lam.publish_layer_version(
        LayerName=name, Description=description, Content={"ZipFile": _zip("python/x.py", description)}
    )
    return str(published["LayerVersionArn"])


def serving_version(lam: Any, model_name: str, version: str) -> str:
    """A published function version serving that model (a model layer and the description naming it)."""
    layer = _layer(lam, MODEL_LAYER, deployer.describe(model_name, version))
    published = deployer.publish_function_version(
        lam,
        function=FUNCTION,
        layer_name=MODEL_LAYER,
        layer_arn=layer,
        description=deployer.describe(model_name, version),
    )
    return published["function_version"]


@contextlib.contextmanager
def fresh_handler(path: Path) -> Iterator[ModuleType]:
    """A function's handler module as a fresh container imports it (settings read from the environment
    now), its database connection closed after."""
    get_settings.cache_clear()
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        module.database.close()
        get_settings.cache_clear()
