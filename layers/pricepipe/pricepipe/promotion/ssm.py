"""SSM adapter: the parameter naming the champion's model layer, which ``cdk deploy`` reads."""

from __future__ import annotations

from typing import Any


def put_model_layer_parameter(ssm: Any, name: str, layer_arn: str) -> dict[str, Any]:
    """Record the champion's model layer in SSM, where the serving stack reads it on ``cdk deploy``, so a
    code deploy publishes its new version with the champion's model rather than without one."""
    put = ssm.put_parameter(
        Name=name,
        Value=layer_arn,
        Type="String",
        Overwrite=True,
        Description="Model layer version of the champion (set by the promotion flow)",
    )
    return {"parameter": name, "value": layer_arn, "version": put.get("Version")}


def value(ssm: Any, name: str) -> str | None:
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except Exception as exc:
        if "ParameterNotFound" in type(exc).__name__ or "ParameterNotFound" in str(exc):
            return None
        raise


def restore(ssm: Any, name: str, value: str | None) -> None:
    try:
        if value is None:
            ssm.delete_parameter(Name=name)
        else:
            put_model_layer_parameter(ssm, name, value)
    except Exception:  # noqa: BLE001, S110 - best effort; the original error is what the caller must see
        pass
