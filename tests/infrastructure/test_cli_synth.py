"""The pinned CDK CLI synthesizes the app from a clean environment, as ``make synth`` and deploys do."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from infrastructure.catalog import ROOT
from infrastructure.stacks import STACKS

pytestmark = pytest.mark.infra

CDK = ROOT / "node_modules" / ".bin" / "cdk"


@pytest.mark.skipif(not CDK.exists(), reason="node_modules/.bin/cdk is missing: run `npm ci` (make test does)")
def test_given_the_pinned_cli_when_it_synthesizes_the_app_then_it_exits_zero_with_every_template(
    tmp_path: Path,
) -> None:
    outdir = tmp_path / "cdk.out"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CDK_DEFAULT_", "AWS_PROFILE", "AWS_ACCESS_KEY", "AWS_SECRET", "AWS_SESSION"))
    }
    env.update(
        CDK_DISABLE_CLI_TELEMETRY="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION="1",
        # No credentials here: do not let the SDK wait on the EC2 instance metadata service.
        AWS_EC2_METADATA_DISABLED="true",
        # A deprecated aws-cdk-lib API fails the synth instead of printing a warning nobody reads.
        JSII_DEPRECATED="fail",
    )
    result = subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "-o", str(outdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"cdk synth failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    manifest = json.loads((outdir / "manifest.json").read_text())
    stacks = {
        name for name, artifact in manifest["artifacts"].items() if artifact["type"] == "aws:cloudformation:stack"
    }
    assert stacks == set(STACKS)
    for stack in stacks:
        assert (outdir / f"{stack}.template.json").is_file()
