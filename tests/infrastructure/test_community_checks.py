"""The checks AWS users run on their own templates: cfn-lint on every synthesized template, and the
npm ``asl-validator`` on every state machine definition as it deploys (placeholders substituted).

Both run once, over every file at a time, on the package's one synthesized app.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infrastructure import catalog
from infrastructure.stacks import PIPELINE_STACK
from tests.infrastructure.conftest import Synthesized
from tests.infrastructure.support import Resources, of_type

ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"

# cfn-lint rules this project does not follow, each with why. Everything else, warnings included, must pass.
IGNORED_CFN_LINT_RULES = {
    "W3005": (
        "'dependency already enforced by a GetAtt': CDK itself adds DependsOn on a function's role and "
        "default policy (so the policy exists before the function is invoked) next to the GetAtt of the "
        "role; redundant for ordering, harmless, and not ours to remove."
    ),
}

# What a deployed stack resolves its pseudo parameters to; any valid values do for validation.
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012"}


def test_every_template_passes_cfn_lint(synthesized: Synthesized) -> None:
    templates = sorted(synthesized.outdir.glob("*.template.json"))
    assert len(templates) == len(catalog.STACKS), templates
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [
            str(cfn_lint),
            "--format",
            "parseable",
            "--ignore-checks",
            *IGNORED_CFN_LINT_RULES,
            "--",
            *map(str, templates),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # Exit code 0 is clean; 2 errors, 4 warnings (bit flags); anything else is cfn-lint failing to run.
    assert result.returncode == 0, f"cfn-lint (exit {result.returncode}):\n{result.stdout}{result.stderr}"


def _arn(value: Any, resources: Resources) -> str:
    """A substitution value of a synthesized template as CloudFormation resolves it, for the resources
    state machines refer to (functions, job queues and definitions, other machines by fixed name)."""
    if isinstance(value, str):
        return value
    region, account = PSEUDO["AWS::Region"], PSEUDO["AWS::AccountId"]
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_arn(part, resources) for part in parts)
    if "Ref" in value and value["Ref"] in PSEUDO:
        return PSEUDO[value["Ref"]]
    logical, _ = value["Fn::GetAtt"] if "Fn::GetAtt" in value else (value["Ref"], "Ref")
    resource = resources[logical]
    props = resource["Properties"]
    if resource["Type"] == "AWS::Lambda::Function":
        return f"arn:aws:lambda:{region}:{account}:function:{props['FunctionName']}"
    if resource["Type"] == "AWS::Batch::JobQueue":
        return f"arn:aws:batch:{region}:{account}:job-queue/{props['JobQueueName']}"
    if resource["Type"] == "AWS::Batch::JobDefinition":  # Ref is the ARN of its latest revision
        return f"arn:aws:batch:{region}:{account}:job-definition/{props['JobDefinitionName']}:1"
    raise AssertionError(f"no ARN for {value} ({resource['Type']}): extend _arn")


def test_every_state_machine_definition_passes_asl_validator(synthesized: Synthesized, tmp_path: Path) -> None:
    """The definition each template deploys (its staged asset), substituted as CloudFormation does."""
    resources = synthesized.raw_template(PIPELINE_STACK)["Resources"]
    machines = of_type(resources, "AWS::StepFunctions::StateMachine")
    assert {m["Properties"]["StateMachineName"] for m in machines.values()} == {
        spec.name for spec in catalog.STATE_MACHINES
    }
    paths = []
    for logical, machine in sorted(machines.items()):
        props = machine["Properties"]
        staged = synthesized.asset_path(props["DefinitionS3Location"]["Key"])
        values = {name: _arn(value, resources) for name, value in props["DefinitionSubstitutions"].items()}
        rendered = catalog.substitute(staged.read_text(encoding="utf-8"), values, where=logical)
        path = tmp_path / f"{props['StateMachineName']}.asl.json"
        path.write_text(rendered, encoding="utf-8")
        paths.append(path)
    if not ASL_VALIDATOR.is_file():
        pytest.fail(f"{ASL_VALIDATOR} missing: run `make node_modules/.installed` (package.json pins it)")
    args = [arg for path in paths for arg in ("--json-path", str(path))]
    result = subprocess.run([str(ASL_VALIDATOR), *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"asl-validator:\n{result.stdout}{result.stderr}"
    assert json.loads(paths[0].read_text())["States"]  # it validated real definitions, not empty files
