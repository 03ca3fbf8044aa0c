"""Fixed names of the Lambda layers the stacks publish.

A layer version's ARN is ``arn:<partition>:lambda:<region>:<account>:layer:<name>:<version>``: with a
fixed name, a policy can grant "every version of this layer" (``layer:<name>:*``) without a
cross-stack reference. promotion-deploy needs exactly that: ``UpdateFunctionConfiguration`` requires
``lambda:GetLayerVersion`` on every layer the serving function carries, and those layers belong to
the serving stack, which is deployed after the pipeline stack.
"""

from __future__ import annotations

from infrastructure.catalog import MODEL_LAYER, PROJECT

DEPS = f"{PROJECT}-deps"  # third-party dependencies of the shared package (layers/requirements/pricepipe-deps.txt)
NUMPY = f"{PROJECT}-numpy"  # numpy where the AWS SDK for pandas layer is not attached
MLFLOW = f"{PROJECT}-mlflow"  # MLflow's registry client (catalog needs_registry)
PACKAGE = f"{PROJECT}-package"  # the shared pricepipe package
SERVING = f"{PROJECT}-serving"  # the serving function's own dependencies (layers/requirements/serving-deps.txt)
MODEL = MODEL_LAYER  # one version per deployed model (pricepipe.serving.model_layer), plus the "no model" one

# The serving function's layers in order; the model comes last so nothing shadows it
# (pricepipe.promotion.deployer.with_model_layer keeps that order when it swaps the model).
SERVING_FUNCTION_LAYERS = (SERVING, PACKAGE, MODEL)
