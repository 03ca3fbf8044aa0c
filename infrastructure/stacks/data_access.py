"""S3 access from the catalog's declarations: a :class:`~infrastructure.catalog.Grant` becomes IAM.

``read`` is ListBucket restricted to the prefix plus GetObject under it; ``write`` is PutObject and
DeleteObject under it (the ETL load deletes the lake objects of a rolled-back attempt; MLflow
replaces artifacts). Bucket ARNs are built from :class:`BucketNames`, so statements read
``arn:<partition>:s3:::pricepipe-prod-lake-<account>-<region>/processed_features/*`` and need no
cross-stack reference. Functions (``FunctionSpec.s3``) and Batch jobs share this one translation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infrastructure import nag
from infrastructure.catalog import Grant
from infrastructure.stacks.data_stack import BucketNames
from pricepipe.storage import split_uri

BUCKETS = ("landing", "lake", "artifacts")
READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:PutObject", "s3:DeleteObject")


def bucket_arn(stack: Stack, bucket_name: str, prefix: str | None = None) -> str:
    """A bucket's ARN, or the ARN of every object under ``prefix`` in it."""
    arn = f"arn:{stack.partition}:s3:::{bucket_name}"
    return arn if prefix is None else f"{arn}/{prefix}*"


def check(grant: Grant) -> None:
    """Refuse a grant the translation below would get wrong (a typo must not become a wider grant)."""
    if grant.bucket not in BUCKETS:
        raise ValueError(f"grant on unknown bucket {grant.bucket!r}: one of {', '.join(BUCKETS)}")
    if grant.access not in ("read", "write"):
        raise ValueError(f"grant access must be read or write, got {grant.access!r}")
    if not grant.prefix or not grant.prefix.endswith("/") or "*" in grant.prefix:
        raise ValueError(f"grant prefix must be a non-empty folder ending in '/', got {grant.prefix!r}")


def s3_statements(stack: Stack, names: BucketNames, grants: Iterable[Grant]) -> list[iam.PolicyStatement]:
    """The IAM statements that allow exactly ``grants``, in declaration order."""
    statements: list[iam.PolicyStatement] = []
    for grant in grants:
        check(grant)
        bucket = getattr(names, grant.bucket)
        objects = bucket_arn(stack, bucket, grant.prefix)
        if grant.access == "read":
            statements += [
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[bucket_arn(stack, bucket)],
                    conditions={"StringLike": {"s3:prefix": [grant.prefix, f"{grant.prefix}*"]}},
                ),
                iam.PolicyStatement(actions=list(READ_ACTIONS), resources=[objects]),
            ]
        else:
            statements.append(iam.PolicyStatement(actions=list(WRITE_ACTIONS), resources=[objects]))
    return statements


def contract_statements(stack: Stack, contract: str) -> list[iam.PolicyStatement]:
    """Reading a data contract kept in S3 (``s3://bucket/key``); a bundled contract needs nothing."""
    if not contract.startswith("s3://"):
        return []
    bucket, key = split_uri(contract)
    return [iam.PolicyStatement(actions=["s3:GetObject"], resources=[f"arn:{stack.partition}:s3:::{bucket}/{key}"])]


def attach_data_access(
    scope: Construct,
    role: iam.IRole,
    *,
    names: BucketNames,
    grants: Sequence[Grant],
    contract: str,
    who: str,
) -> iam.Policy | None:
    """One ``DataAccessPolicy`` under ``scope`` holding ``grants`` (and the contract); None if empty.

    Each object-prefix wildcard is acknowledged for cdk-nag by its exact ARN, so a wider wildcard
    added later is still reported.
    """
    stack = Stack.of(scope)
    statements = s3_statements(stack, names, grants) + contract_statements(stack, contract)
    if not statements:
        return None
    policy = iam.Policy(scope, "DataAccessPolicy", statements=statements, roles=[role])
    findings = {nag.resource_finding(stack, r) for statement in statements for r in statement.resources}
    for finding in sorted(f for f in findings if "*" in f):
        nag.acknowledge(
            policy,
            "IAM5",
            "Object-key prefix grant: the objects under one prefix of one bucket, which is what "
            f"{who} reads or writes there (pricepipe.settings bucket layout, catalog grants).",
            finding=finding,
        )
    return policy
