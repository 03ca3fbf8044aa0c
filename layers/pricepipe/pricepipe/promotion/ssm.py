"""SSM adapter: the parameter recording the champion's model layer, for operators and tools.

Nothing in the deploy path reads it: which model a function version carries is decided by the
promotion flow when it publishes the version (:mod:`pricepipe.promotion.deployer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

DESCRIPTION = "Model layer version of the champion (set by the promotion flow)"


def put_model_layer_parameter(ssm: SSMClient, name: str, layer_arn: str) -> int:
    """Record ``layer_arn`` as the champion's model layer; the parameter's new version."""
    put = ssm.put_parameter(Name=name, Value=layer_arn, Type="String", Overwrite=True, Description=DESCRIPTION)
    return put["Version"]


def value(ssm: SSMClient, name: str) -> str | None:
    """The parameter's value, or None when there is no such parameter."""
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None


def restore(ssm: SSMClient, name: str, value: str | None) -> None:
    """Best effort: the parameter as :func:`value` read it (None: there was none, so delete it)."""
    try:
        if value is None:
            ssm.delete_parameter(Name=name)
        else:
            put_model_layer_parameter(ssm, name, value)
    except Exception:  # noqa: BLE001, S110 - the original error is what the caller must see
        pass
