"""cdk-nag (3.x) wiring: the AWS Solutions pack as a synth-time validation plugin, and acknowledgments.

With cdk-nag 3 a finding is not an annotation: the pack runs as a CDK policy-validation plugin and
any unacknowledged finding, error or warning, fails ``synth`` with a report. Acknowledgments are
CDK's own ``Validations.of(construct).acknowledge(...)``; they hold for the construct and everything
below it, so each one is placed on the narrowest construct that carries the finding, next to the
code that causes it, with the reason it is accepted.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

PACK = "AwsSolutions"


def enable(app: IConstruct) -> None:
    """Run the AWS Solutions checks on every synth of ``app``.

    Acknowledged rules are also written into each resource's CloudFormation metadata, so the
    template itself records why a finding was accepted.
    """
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True, write_suppressions_to_cloud_formation=True))


def acknowledge(scope: IConstruct, rule: str, reason: str, finding: str | None = None) -> None:
    """Accept ``rule`` (optionally one ``finding`` of it, e.g. ``Resource::*``) on ``scope`` and below."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id(rule, finding), reason=reason))


def rule_id(rule: str, finding: str | None = None) -> str:
    """The id cdk-nag reports: ``AwsSolutions-IAM5`` or, for one finding, ``AwsSolutions-IAM5[Resource::*]``."""
    full = rule if rule.startswith(f"{PACK}-") else f"{PACK}-{rule}"
    return full if finding is None else f"{full}[{finding}]"


def resource_finding(stack: Stack, arn: str) -> str:
    """The IAM5 finding cdk-nag reports for ``arn`` (a token or a literal) used as a policy resource."""
    return f"Resource::{flatten(stack.resolve(arn))}"


def flatten(node: Any) -> str:  # noqa: PLR0911 - one return per CloudFormation intrinsic it flattens
    """A resolved CloudFormation value as cdk-nag prints it (mirror of its ``flattenCfnReference``)."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return str(delimiter).join(flatten(item) for item in items)
        if "Fn::Sub" in node:
            return flatten(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"][:2]
            return f"<{flatten(resource)}.{flatten(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False)
