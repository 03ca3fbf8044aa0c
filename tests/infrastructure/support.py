"""Reading synthesized templates: resources by type, a role's statements, S3 grants as (action, where)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infrastructure.catalog import Grant

Resources = dict[str, dict[str, Any]]


def of_type(resources: Resources, kind: str) -> Resources:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements_of_role(resources: Resources, role: str) -> list[dict[str, Any]]:
    """Every statement of every inline policy (AWS::IAM::Policy) attached to the role ``role``."""
    statements = []
    for policy in of_type(resources, "AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def actions_of(statements: Iterable[dict[str, Any]]) -> set[str]:
    return {action for statement in statements for action in as_list(statement["Action"])}


def s3_grants(statements: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """(action, where) of every S3 permission: where is ``lake/processed_features/*`` for objects and
    ``landing?prefix=landing/`` for a listing restricted to a prefix (``landing`` if unrestricted)."""
    grants = set()
    for statement in statements:
        for action in as_list(statement["Action"]):
            if not action.startswith("s3:"):
                continue
            for resource in as_list(statement["Resource"]):
                if resource == "*":
                    grants.add((action, "*"))
                    continue
                parts = resource["Fn::Join"][1]
                name = next(p for p in parts if isinstance(p, str) and "pricepipe-prod-" in p)
                where = name.split("pricepipe-prod-")[1].rstrip("-")
                if isinstance(parts[-1], str) and parts[-1].startswith("/"):
                    where += parts[-1]
                prefixes = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
                if action == "s3:ListBucket" and prefixes:
                    # A listing is only as narrow as its condition: it must be exactly the prefix and below.
                    prefix = prefixes[0]
                    assert sorted(prefixes) == sorted([prefix, f"{prefix}*"]), prefixes
                    where += f"?prefix={prefix}"
                grants.add((action, where))
    return grants


def expected_s3_grants(grants: Iterable[Grant]) -> set[tuple[str, str]]:
    """What :func:`s3_grants` must find for catalog grants: read lists and gets, write puts and deletes."""
    expected = set()
    for grant in grants:
        objects = f"{grant.bucket}/{grant.prefix}*"
        if grant.access == "read":
            expected |= {("s3:ListBucket", f"{grant.bucket}?prefix={grant.prefix}"), ("s3:GetObject", objects)}
        else:
            expected |= {("s3:PutObject", objects), ("s3:DeleteObject", objects)}
    return expected
