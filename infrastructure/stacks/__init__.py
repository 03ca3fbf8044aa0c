"""The CDK stacks: :class:`DataStack` (network, buckets, database) and :class:`PipelineStack`."""

from infrastructure.stacks.application import DATA_STACK, PIPELINE_STACK, build_app
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_stack import DataStack
from infrastructure.stacks.pipeline_stack import PipelineStack

__all__ = ["DATA_STACK", "PIPELINE_STACK", "DataStack", "DeployConfig", "PipelineStack", "build_app"]
