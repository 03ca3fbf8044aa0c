"""Fixed names of the Lambda layers the stacks publish.

A layer version's ARN is ``arn:<partition>:lambda:<region>:<account>:layer:<name>:<version>``: with a
fixed name, a policy can grant "every version of this layer" (``layer:<name>:*``) without a
cross-stack reference. promotion-deploy needs exactly that: ``UpdateFunctionConfiguration`` requires
``lambda:GetLayerVersion`` on every layer the serving function carries, and those layers belong to
the serving stack, which is deployed after the pipeline stack.
"""

from __future__ import annotations

from infrastructure import catalog

# Defined in the catalog, which the local cloud reads too (catalog.function_layers: which, in what order).
DEPS = catalog.DEPS_LAYER
NUMPY = catalog.NUMPY_LAYER
MLFLOW = catalog.MLFLOW_LAYER
PACKAGE = catalog.PACKAGE_LAYER
SERVING = catalog.SERVING_LAYER
MODEL = catalog.MODEL_LAYER  # one version per deployed model (pricepipe.serving.model_layer), plus the "no model" one

# The serving function's layers in order; the model comes last so nothing shadows it
# (pricepipe.promotion.deployer.with_model_layer keeps that order when it swaps the model).
SERVING_FUNCTION_LAYERS = (*catalog.function_layers(catalog.function(catalog.SERVING_FUNCTION)), MODEL)
