"""cdk-nag (AWS Solutions): no finding left unacknowledged, and no acknowledgment without a finding."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING
from unittest import mock

import pytest
from aws_cdk import App, Stack, Validations
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

from infrastructure import nag
from infrastructure.stacks import build_app

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra


def _violations(scope: IConstruct) -> list[tuple[str, str, str]]:
    """(rule id, severity, construct path) of every finding the AWS Solutions pack reports."""
    report = AwsSolutionsChecks().validate_scope(scope)
    return [
        (v.rule_name, v.severity or "", r.construct_path or "")
        for v in report.violations
        for r in v.violating_resources
    ]


def _acknowledgments(scope: IConstruct) -> Iterator[tuple[str, str, str]]:
    """(construct path, rule id, reason) of every acknowledgment recorded in the construct tree."""
    for entry in scope.node.metadata:
        if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY and entry.data:
            for rule, reason in dict(entry.data).items():
                yield scope.node.path, rule.split("::", 1)[-1], str(reason)
    for child in scope.node.children:
        yield from _acknowledgments(child)


def test_given_the_app_when_checked_then_aws_solutions_reports_no_unacknowledged_error_or_warning(
    synthesized: Synthesized,
) -> None:
    assert _violations(synthesized.app) == []


def test_given_the_app_then_every_cdk_nag_acknowledgment_gives_a_specific_reason(synthesized: Synthesized) -> None:
    acknowledged = [a for a in _acknowledgments(synthesized.app) if a[1].startswith(nag.PACK)]
    assert acknowledged, "the app acknowledges findings; none were recorded"
    vague = [(path, rule) for path, rule, reason in acknowledged if len(reason) < 60]
    assert vague == []


def test_given_the_app_when_synthesized_then_cdk_reports_no_error_or_warning(synthesized: Synthesized) -> None:
    messages = [
        (stack.stack_name, str(m.level), m.id, str(m.entry.data)[:200])
        for stack in synthesized.assembly.stacks
        for m in stack.messages
        if str(m.level).lower().endswith(("error", "warning", "warn"))
    ]
    assert messages == []


def test_given_the_app_then_the_api_passes_apig3_apig4_and_cog4_except_the_open_docs_methods(
    synthesized: Synthesized,
) -> None:
    """A WAF, a Cognito authorizer on every method: only the three docs methods are acknowledged, by design."""
    from infrastructure.stacks.serving_stack import PUBLIC_DOC_PATHS

    acknowledged = {
        (path, rule)
        for path, rule, _ in _acknowledgments(synthesized.app)
        if rule.split("[")[0] in {nag.rule_id(r) for r in ("APIG3", "APIG4", "COG4")}
    }
    docs = {f"PricePipe-Serving/RestApi/Default{path}/GET" for path in PUBLIC_DOC_PATHS}
    assert acknowledged == {(path, nag.rule_id(rule)) for path in docs for rule in ("APIG4", "COG4")}


# dev: no WAF on the stage, so APIG3 is acknowledged there (and the disposable database's findings)
@pytest.mark.parametrize(
    "context", [{}, {"pricepipe:bastion": "true", "pricepipe:stage": "dev"}], ids=["default", "bastion-dev"]
)
def test_given_the_acknowledgments_then_each_one_silences_a_real_finding(context: dict[str, str]) -> None:
    """Build the app again without acknowledging anything: every acknowledgment must match a finding there."""
    recorded: list[tuple[str, str]] = []

    def record(scope: IConstruct, rule: str, reason: str, finding: str | None = None) -> None:
        recorded.append((scope.node.path, nag.rule_id(rule, finding)))

    with (
        mock.patch.object(nag, "acknowledge", record),
        mock.patch.dict(os.environ, {}, clear=False) as env,
        tempfile.TemporaryDirectory() as outdir,
    ):
        env.pop("CDK_DEFAULT_ACCOUNT", None)
        env.pop("CDK_DEFAULT_REGION", None)
        raw = build_app(outdir=outdir, context=context)
        findings = _violations(raw)

    assert recorded
    stale = [
        (path, rule_id)
        for path, rule_id in recorded
        if not any(rule == rule_id and (where == path or where.startswith(f"{path}/")) for rule, _, where in findings)
    ]
    assert stale == []


def test_given_an_unencrypted_public_bucket_when_checked_then_the_pack_reports_it() -> None:
    """The check above can fail: the same pack flags an obviously bad bucket."""
    app = App()
    stack = Stack(app, "Bad")
    s3.Bucket(stack, "Open", block_public_access=s3.BlockPublicAccess(block_public_policy=False))

    rules = {rule for rule, _, _ in _violations(app)}

    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules
