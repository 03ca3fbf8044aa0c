"""The CDK app: the stacks, tags and the cdk-nag checks, built the same way by ``app.py`` and tests.

Deployed in this order (``cdk deploy --all``): data (network, buckets, database) -> pipeline (layers,
functions, jobs, state machines, the model-layer parameter) -> serving (the API, its live alias,
which only the promotion flow moves) -> monitoring (alarms to an SNS topic, the dashboard).
Monitoring names what it watches and references nothing, so it can also be deployed on its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from aws_cdk import App, Environment, Tags

from infrastructure import nag
from infrastructure.catalog import DATA_STACK, MONITORING_STACK, PIPELINE_STACK, PROJECT, ROOT, SERVING_STACK, STACKS  # noqa: F401
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_stack import DataStack
from infrastructure.stacks.monitoring_stack import MonitoringStack
from infrastructure.stacks.pipeline_stack import PipelineStack
from infrastructure.stacks.serving_stack import ServingStack


def environment() -> Environment | None:
    """The CLI's account and region when it provides them; otherwise an environment-agnostic app."""
    account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
    if account and region:
        return Environment(account=account, region=region)
    return None


def project_context() -> dict[str, Any]:
    """The ``context`` of cdk.json: feature flags and settings the CLI would pass."""
    cdk_json = ROOT / "cdk.json"
    if not cdk_json.is_file():
        return {}
    return dict(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))


def build_app(*, outdir: str | None = None, context: Mapping[str, Any] | None = None) -> App:
    """The stacks with the AWS Solutions checks enabled; call ``synth()`` on the result.

    cdk.json's context is applied here too, so an app built by a test or by ``python app.py`` has the
    same feature flags as one run by the CLI (whose own context still takes precedence).
    """
    app = App(outdir=outdir, context={**project_context(), **(context or {})})
    config = DeployConfig.from_context(app.node)
    env = environment()
    data = DataStack(
        app,
        DATA_STACK,
        stack_name=DATA_STACK,
        description="PricePipe: isolated VPC and endpoints, S3 buckets (landing, lake, artifacts) and RDS PostgreSQL",
        env=env,
        termination_protection=config.retain_data,
        config=config,
    )
    pipeline = PipelineStack(
        app,
        PIPELINE_STACK,
        stack_name=PIPELINE_STACK,
        description=(
            "PricePipe: Lambda functions, layers, Batch jobs on Fargate, database migrations, Step Functions "
            "and their triggers"
        ),
        env=env,
        data=data,
        config=config,
    )
    # Implied by the secret and VPC references too, but the buckets are used by name: say it outright.
    pipeline.add_stack_dependency(data, "the pipeline uses the data stack's buckets, database and network")
    serving = ServingStack(
        app,
        SERVING_STACK,
        stack_name=SERVING_STACK,
        description=(
            "PricePipe: the prediction API (FastAPI on Lambda) behind API Gateway, its live alias (moved by the "
            "promotion flow only), and the prediction log"
        ),
        env=env,
        data=data,
        pipeline=pipeline,
        config=config,
    )
    # CloudFormation resolves the model-layer parameter when it creates this stack's change set: the
    # pipeline stack creates that parameter, so it must be deployed first.
    serving.add_stack_dependency(pipeline, "the pipeline stack creates the model-layer parameter the API resolves")
    MonitoringStack(
        app,
        MONITORING_STACK,
        stack_name=MONITORING_STACK,
        description="PricePipe: alarms to an SNS topic and a CloudWatch dashboard of the API, flows, drift, training",
        env=env,
        config=config,
    )
    Tags.of(app).add("project", PROJECT)
    Tags.of(app).add("stage", config.stage)
    nag.enable(app)
    return app
