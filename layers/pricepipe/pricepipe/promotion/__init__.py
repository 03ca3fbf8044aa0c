"""Promotion: how a registered model version comes to serve the ``live`` alias, and how it leaves.

The state machine is the one owner of the alias (``cdk deploy`` never moves it): a model promotion
(``kind: model``, the default) serves a new model on the function's current code; a **code rollout**
(``kind: code``, started after a deploy by ``pipectl rollout``) serves the function's current code
with the champion's model, through the same steps, checks and history rows.

The steps of ``infrastructure/statemachines/promotion.asl.json`` and the operator's commands
(``pipectl approve | reject | rollback | deployments``), as plain functions over a database
connection, an MLflow client and AWS clients passed in. Strategies:

- **blue-green**: deploy, switch the alias at once; the old version stays published and recorded, so
  :func:`~.rollback.rollback` puts it back with one alias update.
- **auto**: the metric gate (:func:`~.gate.gate`), then as blue-green.
- **canary**: deploy, give the new version ``canary_percent`` of the traffic, bake, judge its own
  metrics (:mod:`pricepipe.promotion.canary`), then switch fully or roll back on its own.
- **manual**: deploy, then wait for a person (a Step Functions task token), then as blue-green.

Every change is written down: MLflow aliases (champion, challenger, previous, mirrored into
``model_registry.models.stage`` by :mod:`pricepipe.registry`), a ``model_registry.deployments`` row
saying what changed and why, and the run's ``model_registry.promotions`` row, which is also the lock
that keeps two promotions from moving the alias at once. A step that fails half-way undoes what it
changed before it raises; the state machine then runs :func:`~.abandon.abandon` with ``outcome="failed"``: the
promotion ends unpromoted (not to be confused with :func:`~.rollback.rollback`, the operator's way back to the
previous champion).

One module per role, in the order a promotion meets them: :mod:`~.plan` (prepare, the lock),
:mod:`~.gate`, :mod:`~.deploy`, :mod:`~.approval`, :mod:`~.canary`, :mod:`~.finalize`,
:mod:`~.abandon`; the operator's :mod:`~.rollback` and :mod:`~.status`; :mod:`~.history` (the
``model_registry`` rows). The AWS edge is one adapter module per service, each taking its client
(typed with the boto3 stubs, imported for type checking only) and raising on modeled errors, never on
text in a message: :mod:`~.deployer` (Lambda), :mod:`~.stepfunctions`, :mod:`~.ssm`,
:mod:`~.cloudwatch`; S3 is :mod:`pricepipe.storage`'s, shared with the other flows.

Its modules are what callers use (``promotion.gate.gate``, ``promotion.rollback.rollback``): the
package re-exports no step function, since one named like its module would hide the module.
"""

from pricepipe.errors import CommandError, DeploymentError, PromotionRefused
from pricepipe.promotion import (
    abandon,
    approval,
    canary,
    cloudwatch,
    deploy,
    deployer,
    finalize,
    gate,
    history,
    plan,
    rollback,
    ssm,
    status,
    stepfunctions,
)

__all__ = [
    "CommandError",
    "DeploymentError",
    "PromotionRefused",
    "abandon",
    "approval",
    "canary",
    "cloudwatch",
    "deploy",
    "deployer",
    "finalize",
    "gate",
    "history",
    "plan",
    "rollback",
    "ssm",
    "status",
    "stepfunctions",
]
