"""Deploying a model to the serving function: Lambda layers, versions and the alias's weights.

A model is deployed as a **layer version** (:func:`pricepipe.serving.model_layer.build_layer_zip`) and a
**function version** of the serving function whose ``Layers`` carry it, so each function version serves
exactly one model version, for good: that is what canary and blue-green route between, and what a
rollback goes back to. The ``live`` alias decides who gets the traffic (``FunctionVersion`` plus
``RoutingConfig.AdditionalVersionWeights`` for a canary). A function version's description names its
model (:func:`describe`), so the version serving a model can be found again from Lambda alone.

Thin adapter over the Lambda and S3 clients it is given (:mod:`pricepipe.promotion.ssm` keeps the
champion's layer in SSM); every function returns a plain dict the promotion state machine can carry.
Nothing here touches the registry.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from pricepipe import storage
from pricepipe.errors import DeploymentError

DESCRIPTION_PREFIX = "model "  # + "<model name>@<version>": how a function version names its model
UPDATE_TIMEOUT_S = 120.0  # Lambda applies a configuration change in seconds; give up well before the task times out

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client


class AliasState(TypedDict):
    """Where an alias sends traffic: its version, the canary weights (version -> share), its revision."""

    function_version: str
    weights: dict[str, float]
    revision_id: str | None


class PublishedVersion(TypedDict):
    """A function version carrying a model layer."""

    function_version: str
    function_arn: str
    layer_arn: str
    code_sha256: str | None
    description: str | None


class ModelDeployment(PublishedVersion):
    """The function version serving a model, and whether it already existed."""

    reused: bool
    layer_version: NotRequired[int]


# -- naming ------------------------------------------------------------------------------------------


def describe(model_name: str, version: str) -> str:
    """The description of the function version serving ``model_name`` version ``version``."""
    return f"{DESCRIPTION_PREFIX}{model_name}@{version}"


def model_of(description: str | None) -> tuple[str, str] | None:
    """``(model name, version)`` a function version's description names, or None (no model)."""
    if not description or not description.startswith(DESCRIPTION_PREFIX):
        return None
    name, at, version = description.removeprefix(DESCRIPTION_PREFIX).split(" ", 1)[0].rpartition("@")
    return (name, version) if at and name and version else None


def layer_name_of(layer_arn: str) -> str:
    """``arn:aws:lambda:<region>:<account>:layer:<name>:<version>`` -> ``<name>``."""
    parts = layer_arn.split(":")
    if len(parts) != 8 or parts[5] != "layer":
        raise DeploymentError(f"not a layer version ARN: {layer_arn}")
    return parts[6]


# -- the model layer ---------------------------------------------------------------------------------


def read_artifact(s3: S3Client, uri: str) -> bytes:
    if not uri.startswith("s3://"):
        raise DeploymentError(f"a serving artifact must be in S3, got {uri}")
    bucket, key = storage.split_uri(uri)
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:
        raise DeploymentError(f"could not read the serving artifact {uri}: {exc}") from exc


def publish_model_layer(
    lam: LambdaClient,
    s3: S3Client,
    *,
    layer_name: str,
    artifact_uri: str,
    metadata: dict[str, Any],
    runtime: str | None,
) -> dict[str, Any]:
    """A new version of the model layer holding the lean artifact at ``artifact_uri``."""
    from pricepipe.serving.model_layer import build_layer_zip

    content = build_layer_zip(read_artifact(s3, artifact_uri), metadata)
    request: dict[str, Any] = {
        "LayerName": layer_name,
        "Description": describe(str(metadata["model_name"]), str(metadata["model_version"])),
        "Content": {"ZipFile": content},
    }
    if runtime:
        request["CompatibleRuntimes"] = [runtime]
    published = lam.publish_layer_version(**request)
    return {"layer_arn": published["LayerVersionArn"], "layer_version": published["Version"], "bytes": len(content)}


# -- function versions -------------------------------------------------------------------------------


def _layer_arns(configuration: dict[str, Any]) -> list[str]:
    return [layer["Arn"] for layer in configuration.get("Layers") or []]


def model_layer_of(configuration: dict[str, Any], layer_name: str) -> str | None:
    """The model layer ARN in a function (version) configuration, or None."""
    return next((arn for arn in _layer_arns(configuration) if layer_name_of(arn) == layer_name), None)


def with_model_layer(layer_arns: list[str], layer_name: str, layer_arn: str) -> list[str]:
    """``layer_arns`` with the model layer replaced (or appended: it comes last, so nothing shadows it)."""
    kept = [arn for arn in layer_arns if layer_name_of(arn) != layer_name]
    return [*kept, layer_arn]


def versions(lam: LambdaClient, function: str) -> list[dict[str, Any]]:
    """Published versions of ``function`` (not $LATEST), newest first."""
    found: list[dict[str, Any]] = []
    for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=function):
        found.extend(v for v in page["Versions"] if v["Version"] != "$LATEST")
    return sorted(found, key=lambda v: int(v["Version"]), reverse=True)


def find_version(
    lam: LambdaClient, function: str, model_name: str, version: str, layer_name: str
) -> dict[str, Any] | None:
    """The newest function version serving that model (named by its description, carrying a model layer)."""
    wanted = (model_name, version)
    for candidate in versions(lam, function):
        if model_of(candidate.get("Description")) == wanted and model_layer_of(candidate, layer_name):
            return candidate
    return None


def _wait_until_updated(
    lam: LambdaClient, function: str, timeout_s: float, version: str | None = None
) -> dict[str, Any]:
    """$LATEST once its last update is applied (``LastUpdateStatus``), or, given ``version``, that
    published version once it is ``Active``. A version of a SnapStart function stays ``Pending`` while
    Lambda initialises it and takes its snapshot, and a Pending function is not invoked: invocations fail
    ("Lambda function states" and "Activating and managing Lambda SnapStart", AWS Lambda Developer Guide),
    so no alias may route to it before."""
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    what, field, done = (function, "LastUpdateStatus", "Successful")
    if version is not None:
        what, field, done = (f"{function} version {version}", "State", "Active")
    while True:
        if version is None:
            configuration = dict(lam.get_function_configuration(FunctionName=function))
        else:
            configuration = dict(lam.get_function_configuration(FunctionName=function, Qualifier=version))
        status = configuration.get(field, done)
        if status == done:
            return configuration
        if status == "Failed":
            reason = f"{configuration.get(f'{field}ReasonCode')}: {configuration.get(f'{field}Reason')}"
            raise DeploymentError(f"{'updating ' if version is None else ''}{what} failed: {reason}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"{what} was still {status} after {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def publish_function_version(
    lam: LambdaClient,
    *,
    function: str,
    layer_name: str,
    layer_arn: str,
    description: str,
    timeout_s: float = UPDATE_TIMEOUT_S,
) -> PublishedVersion:
    """Put ``layer_arn`` on $LATEST in place of any model layer, then publish a version of exactly that.

    The revision ids make both calls conditional: if someone else changes $LATEST in between (a
    ``cdk deploy``, another promotion), Lambda refuses instead of publishing a mix of the two (AWS
    Lambda API Reference, UpdateFunctionConfiguration and PublishVersion: ``RevisionId`` "only update
    the function if the revision ID matches"; a mismatch is PreconditionFailedException).
    """
    current = dict(lam.get_function_configuration(FunctionName=function))
    if current.get("LastUpdateStatus") == "InProgress":
        current = _wait_until_updated(lam, function, timeout_s)
    layers = with_model_layer(_layer_arns(current), layer_name, layer_arn)
    update: dict[str, Any] = {"FunctionName": function, "Layers": layers}
    if current.get("RevisionId"):
        update["RevisionId"] = current["RevisionId"]
    lam.update_function_configuration(**update)
    updated = _wait_until_updated(lam, function, timeout_s)
    publish: dict[str, Any] = {"FunctionName": function, "Description": description}
    if updated.get("RevisionId"):
        publish["RevisionId"] = updated["RevisionId"]
    published: dict[str, Any] = dict(lam.publish_version(**publish))
    if model_layer_of(published, layer_name) != layer_arn:
        raise DeploymentError(
            f"{function} version {published.get('Version')} does not carry {layer_arn}: $LATEST changed while"
            " it was published; run the promotion again"
        )
    if published.get("State", "Active") != "Active":  # a SnapStart version: initialised and snapshotted first
        _wait_until_updated(lam, function, timeout_s, version=str(published["Version"]))
    return _published_version(published, layer_arn)


def _published_version(configuration: dict[str, Any], layer_arn: str) -> PublishedVersion:
    """What a deployment records of a function version's configuration, and the model layer it carries."""
    return {
        "function_version": str(configuration["Version"]),
        "function_arn": configuration["FunctionArn"],
        "layer_arn": layer_arn,
        "code_sha256": configuration.get("CodeSha256"),
        "description": configuration.get("Description"),
    }


def reusable_version(
    lam: LambdaClient, function: str, model_name: str, version: str, layer_name: str, latest: dict[str, Any]
) -> dict[str, Any] | None:
    """A published version serving that model with the code and other layers $LATEST (``latest``) has.

    Re-promoting a model (or retrying a deploy step) then publishes nothing new; a version built
    from older function code is not reused for a promotion, since promoting must not roll code back.
    """
    found = find_version(lam, function, model_name, version, layer_name)
    return found if found is not None and same_build(found, latest, layer_name) else None


# What a version freezes of $LATEST besides its layers (GetFunctionConfiguration's fields), and a
# ``cdk deploy`` may change: the code, and the configuration the function runs with (SnapStart too:
# same_build compares it, so a rollout after switching it publishes a version that has it or not).
BUILD_FIELDS = ("CodeSha256", "Handler", "Runtime", "MemorySize", "Timeout", "Environment")


def same_build(configuration: dict[str, Any], latest: dict[str, Any], layer_name: str) -> bool:
    """Whether a version has the code, configuration and layers other than the model's that ``latest``
    ($LATEST) has: what a ``cdk deploy`` changes, so False means a deploy since it was published."""

    def build(of: dict[str, Any]) -> tuple[Any, ...]:
        others = [arn for arn in _layer_arns(of) if layer_name_of(arn) != layer_name]
        # SnapStart's ApplyOn only: OptimizationStatus is "Off" on $LATEST and "On" on its versions
        snap_start = (of.get("SnapStart") or {}).get("ApplyOn", "None")
        return (*(of.get(name) for name in BUILD_FIELDS), others, snap_start)

    return build(configuration) == build(latest)


def deploy_model(
    lam: LambdaClient,
    s3: S3Client,
    *,
    function: str,
    layer_name: str,
    artifact_uri: str,
    metadata: dict[str, Any],
) -> ModelDeployment:
    """A function version serving this model: an existing one with today's code and layers, else a new
    version of $LATEST carrying the model's layer (published once per model: the layer an earlier version
    of that model carries is attached again)."""
    model_name, version = str(metadata["model_name"]), str(metadata["model_version"])
    latest: dict[str, Any] = dict(lam.get_function_configuration(FunctionName=function))
    existing = reusable_version(lam, function, model_name, version, layer_name, latest)
    if existing is not None:
        layer_arn = model_layer_of(existing, layer_name)
        assert layer_arn is not None  # reusable_version only finds versions carrying a model layer
        if existing.get("State", "Active") != "Active":  # a retry after a SnapStart publish timed out
            _wait_until_updated(lam, function, UPDATE_TIMEOUT_S, version=str(existing["Version"]))
        return {**_published_version(existing, layer_arn), "reused": True}
    # new code for a model served before (a code rollout, or a promotion after a deploy): its layer again
    earlier = find_version(lam, function, model_name, version, layer_name)
    layer_arn = model_layer_of(earlier, layer_name) if earlier is not None else None
    layer_version = None
    if layer_arn is None:
        layer = publish_model_layer(
            lam, s3, layer_name=layer_name, artifact_uri=artifact_uri, metadata=metadata, runtime=latest.get("Runtime")
        )
        layer_arn, layer_version = str(layer["layer_arn"]), int(layer["layer_version"])
    published = publish_function_version(
        lam, function=function, layer_name=layer_name, layer_arn=layer_arn, description=describe(model_name, version)
    )
    deployed: ModelDeployment = {**published, "reused": False}
    if layer_version is not None:
        deployed["layer_version"] = layer_version
    return deployed


def version_configuration(lam: LambdaClient, function: str, version: str) -> dict[str, Any]:
    return dict(lam.get_function_configuration(FunctionName=function, Qualifier=version))


def existing_version_configuration(lam: LambdaClient, function: str, version: str) -> dict[str, Any] | None:
    """The configuration of that function version, or None when it does not exist (deleted, or a
    restarted local cloud that never had it)."""
    try:
        return version_configuration(lam, function, version)
    except lam.exceptions.ResourceNotFoundException:
        return None


# -- the alias ---------------------------------------------------------------------------------------


def alias_state(lam: LambdaClient, function: str, alias: str) -> AliasState:
    """Where ``alias`` sends traffic: its version, the canary weights, and its revision."""
    described = lam.get_alias(FunctionName=function, Name=alias)
    weights = (described.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return {
        "function_version": str(described["FunctionVersion"]),
        "weights": {str(k): float(v) for k, v in weights.items()},
        "revision_id": described.get("RevisionId"),
    }


def _update_alias(
    lam: LambdaClient, function: str, alias: str, version: str, weights: dict[str, float], revision_id: str | None
) -> AliasState:
    request: dict[str, Any] = {
        "FunctionName": function,
        "Name": alias,
        "FunctionVersion": version,
        # an empty map removes a previous split: a switch is never left with a stale canary weight
        "RoutingConfig": {"AdditionalVersionWeights": weights},
    }
    if revision_id:
        request["RevisionId"] = revision_id
    lam.update_alias(**request)
    return alias_state(lam, function, alias)


def set_canary(
    lam: LambdaClient,
    function: str,
    alias: str,
    *,
    stable_version: str,
    canary_version: str,
    percent: float,
    revision_id: str | None = None,
) -> AliasState:
    """``percent`` of the alias's traffic to ``canary_version``, the rest to ``stable_version``."""
    if not 0 < percent < 100:
        raise DeploymentError(f"a canary takes between 0 and 100 percent of the traffic, got {percent}")
    if stable_version == canary_version:
        raise DeploymentError(f"the canary and the stable version are both {stable_version}")
    return _update_alias(lam, function, alias, stable_version, {canary_version: round(percent / 100, 4)}, revision_id)


def switch(lam: LambdaClient, function: str, alias: str, version: str, revision_id: str | None = None) -> AliasState:
    """All of the alias's traffic to ``version`` at once (and no canary split left)."""
    return _update_alias(lam, function, alias, version, {}, revision_id)


def restore_alias(lam: LambdaClient, function: str, alias: str, snapshot: AliasState) -> AliasState:
    """Put the alias back as :func:`alias_state` recorded it."""
    return _update_alias(lam, function, alias, snapshot["function_version"], dict(snapshot.get("weights") or {}), None)
