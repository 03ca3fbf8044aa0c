"""One synthesized CDK app for all infrastructure tests (a synth takes seconds and ~1 GiB of memory).

The app is built exactly as ``cdk synth`` builds it (cdk.json context, cdk-nag plugin enabled), into
a temporary cloud assembly; tests read templates and staged assets from that assembly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before jsii starts its Node process: no end-of-life banners, no telemetry.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")

import pytest
from aws_cdk import App, cx_api
from aws_cdk.assertions import Template

from infrastructure.catalog import SERVING_FUNCTION, FunctionSpec
from infrastructure.stacks import DATA_STACK, MONITORING_STACK, PIPELINE_STACK, SERVING_STACK, build_app


@dataclass(frozen=True)
class Synthesized:
    app: App
    assembly: cx_api.CloudAssembly
    outdir: Path

    def template(self, stack_name: str) -> Template:
        return Template.from_json(self.raw_template(stack_name))

    def raw_template(self, stack_name: str) -> dict[str, Any]:
        return dict(self.assembly.get_stack_by_name(stack_name).template)

    def asset_path(self, s3_key: str) -> Path:
        """The staged asset a template refers to by S3 key: a directory (``<hash>.zip``) or a file."""
        name = f"asset.{s3_key.removesuffix('.zip')}" if s3_key.endswith(".zip") else f"asset.{s3_key}"
        path = self.outdir / name
        assert path.exists(), f"no staged asset {name} in {self.outdir}"
        return path


@pytest.fixture(scope="package")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    outdir = tmp_path_factory.mktemp("cdk.out")
    with pytest.MonkeyPatch.context() as env:
        # Environment-agnostic, whatever account the developer's shell points at.
        env.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
        env.delenv("CDK_DEFAULT_REGION", raising=False)
        app = build_app(outdir=str(outdir))
        try:
            assembly = app.synth()  # runs the cdk-nag plugin: any unacknowledged finding raises here
        except RuntimeError as error:
            raise AssertionError(f"synth failed:\n{_validation_failures(outdir) or error}") from error
    return Synthesized(app=app, assembly=assembly, outdir=outdir)


def _validation_failures(outdir: Path) -> str:
    """One line per violation of the policy-validation report (cdk-nag), if synth wrote one."""
    report = outdir / "validation-report.json"
    if not report.is_file():
        return ""
    lines = []
    for plugin in json.loads(report.read_text()).get("pluginReports", []):
        for violation in plugin.get("violations", []):
            for construct in violation.get("violatingConstructs", []):
                lines.append(f"{violation['ruleName']} ({violation.get('severity')}) at {construct['constructPath']}")
    return "\n".join(lines)


@pytest.fixture(scope="package")
def data_template(synthesized: Synthesized) -> Template:
    return synthesized.template(DATA_STACK)


@pytest.fixture(scope="package")
def pipeline_template(synthesized: Synthesized) -> Template:
    return synthesized.template(PIPELINE_STACK)


@pytest.fixture(scope="package")
def pipeline_resources(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return dict(synthesized.raw_template(PIPELINE_STACK)["Resources"])


@pytest.fixture(scope="package")
def data_resources(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return dict(synthesized.raw_template(DATA_STACK)["Resources"])


@pytest.fixture(scope="package")
def serving_template(synthesized: Synthesized) -> Template:
    return synthesized.template(SERVING_STACK)


@pytest.fixture(scope="package")
def serving_resources(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return dict(synthesized.raw_template(SERVING_STACK)["Resources"])


@pytest.fixture(scope="package")
def monitoring_template(synthesized: Synthesized) -> Template:
    return synthesized.template(MONITORING_STACK)


@pytest.fixture(scope="package")
def monitoring_resources(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return dict(synthesized.raw_template(MONITORING_STACK)["Resources"])


@pytest.fixture(scope="package")
def resources_of(
    pipeline_resources: dict[str, dict[str, Any]], serving_resources: dict[str, dict[str, Any]]
) -> Callable[[FunctionSpec], dict[str, dict[str, Any]]]:
    """The resources of the stack that deploys a catalog function: the serving stack's for the API,
    the pipeline stack's for every other one."""

    def of(spec: FunctionSpec) -> dict[str, dict[str, Any]]:
        return serving_resources if spec.key == SERVING_FUNCTION else pipeline_resources

    return of
