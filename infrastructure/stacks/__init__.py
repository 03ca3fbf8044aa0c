"""The CDK stacks: data, pipeline, serving and monitoring (see :mod:`infrastructure.stacks.application`)."""

from infrastructure.stacks.application import (
    DATA_STACK,
    MONITORING_STACK,
    PIPELINE_STACK,
    SERVING_STACK,
    STACKS,
    build_app,
)
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_stack import DataStack
from infrastructure.stacks.monitoring_stack import MonitoringStack
from infrastructure.stacks.pipeline_stack import PipelineStack
from infrastructure.stacks.serving_stack import ServingStack

__all__ = [
    "DATA_STACK",
    "MONITORING_STACK",
    "PIPELINE_STACK",
    "SERVING_STACK",
    "STACKS",
    "DataStack",
    "DeployConfig",
    "MonitoringStack",
    "PipelineStack",
    "ServingStack",
    "build_app",
]
