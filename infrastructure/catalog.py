"""What the pipeline is made of, declared once for the CDK stacks and the local cloud alike.

Plain Python (no CDK import), so the local cloud can create the very same functions, with the same
handlers, environment and state-machine substitutions, as ``cdk deploy`` does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"
STATE_MACHINES_DIR = Path(__file__).resolve().parent / "statemachines"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]+)\}")

PROJECT = "pricepipe"
LAMBDA_RUNTIME = "python3.12"


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda function: a handler in ``functions/<folder>`` over the shared layer."""

    key: str  # short name; the deployed name is f"{PROJECT}-{key}"
    folder: str
    handler: str
    description: str
    memory_mb: int = 512
    timeout_s: int = 60
    substitution: str | None = None  # its ARN's placeholder in the ASL files
    needs_database: bool = True
    needs_data_layer: bool = True  # pandas/pyarrow (AWS SDK for pandas managed layer)

    @property
    def name(self) -> str:
        return f"{PROJECT}-{self.key}"

    @property
    def code_dir(self) -> Path:
        return FUNCTIONS_DIR / self.folder


@dataclass(frozen=True)
class StateMachineSpec:
    key: str
    file: str
    description: str
    substitutions: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{PROJECT}-{self.key}"

    @property
    def path(self) -> Path:
        return STATE_MACHINES_DIR / self.file


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(
        key="etl-discover",
        folder="etl",
        handler="handler.discover",
        description="ETL: list landing files not yet taken and write the run's manifest",
        memory_mb=512,
        timeout_s=120,
        substitution="EtlDiscoverFunctionArn",
    ),
    FunctionSpec(
        key="etl-load",
        folder="etl",
        handler="handler.load_file",
        description="ETL: validate one landing file, quarantine bad rows, load Postgres and the lake",
        memory_mb=1024,
        timeout_s=900,
        substitution="EtlLoadFunctionArn",
    ),
    FunctionSpec(
        key="etl-summarize",
        folder="etl",
        handler="handler.summarize",
        description="ETL: totals of a run from the ingestion ledger, and its metrics",
        memory_mb=256,
        timeout_s=60,
        substitution="EtlSummarizeFunctionArn",
    ),
    FunctionSpec(
        key="migrate",
        folder="migrate",
        handler="handler.on_event",
        description="Custom resource: apply database migrations and sync the contract's tables",
        memory_mb=256,
        timeout_s=300,
    ),
)

STATE_MACHINES: tuple[StateMachineSpec, ...] = (
    StateMachineSpec(
        key="etl",
        file="etl.asl.json",
        description="Landing files -> validated rows in PostgreSQL and the Parquet lake",
        substitutions=("EtlDiscoverFunctionArn", "EtlLoadFunctionArn", "EtlSummarizeFunctionArn"),
    ),
)


def function(key: str) -> FunctionSpec:
    return next(f for f in FUNCTIONS if f.key == key)


def state_machine(key: str) -> StateMachineSpec:
    return next(s for s in STATE_MACHINES if s.key == key)


def placeholders(spec: StateMachineSpec) -> set[str]:
    return set(PLACEHOLDER.findall(spec.path.read_text(encoding="utf-8")))


def render_definition(spec: StateMachineSpec, values: dict[str, str]) -> str:
    """The ASL with every ``${Name}`` replaced: what CDK's definition_substitutions do at deploy."""
    text = spec.path.read_text(encoding="utf-8")
    missing = placeholders(spec) - values.keys()
    if missing:
        raise KeyError(f"{spec.file} needs values for {', '.join(sorted(missing))}")
    rendered = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    json.loads(rendered)  # a bad substitution must fail here, not inside the engine
    return rendered


def function_environment(
    spec: FunctionSpec,
    *,
    landing_bucket: str,
    lake_bucket: str,
    artifacts_bucket: str,
    database_secret_arn: str,
    contract: str,
    stage: str,
) -> dict[str, str]:
    """Environment of a function: the same keys on AWS and the local cloud; values differ."""
    env = {
        "PRICEPIPE_STAGE": stage,
        "PRICEPIPE_CONTRACT": contract,
        "PRICEPIPE_LANDING_BUCKET": landing_bucket,
        "PRICEPIPE_LAKE_BUCKET": lake_bucket,
        "PRICEPIPE_ARTIFACTS_BUCKET": artifacts_bucket,
        "POWERTOOLS_SERVICE_NAME": spec.name,
    }
    if spec.needs_database:
        env["PRICEPIPE_DATABASE_SECRET_ARN"] = database_secret_arn
    return env


def camel(key: str) -> str:
    """``etl-load`` -> ``EtlLoad``: how a key appears in construct ids and stack output names."""
    return "".join(part.capitalize() for part in key.split("-"))


def function_output(spec: FunctionSpec) -> str:
    """The stack output holding a function's name (read by ``pipectl --target aws``)."""
    return f"{camel(spec.key)}FunctionName"


def state_machine_output(spec: StateMachineSpec) -> str:
    return f"{camel(spec.key)}StateMachineArn"
