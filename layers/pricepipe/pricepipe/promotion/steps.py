"""The promotion flow's step inputs and outputs, as the state machine carries them.

``infrastructure/statemachines/promotion.asl.json`` keeps each step's result at a path of the
execution's state (``$.plan``, ``$.deployment``, ``$.gate``, ``$.canary_started``, ``$.canary``,
``$.approval``, ``$.result``, and ``$.error`` when a step failed), picking fields with
``ResultSelector``; :class:`PromotionState` is that state as Finalize, CheckCanary and Abandon receive
it. The shapes are JSON: TypedDicts, so a step's output is the dict the ASL reads by JSONPath.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pricepipe.promotion.deployer import AliasState, ModelDeployment

Kind = Literal["model", "code"]  # a model promotion, or a code rollout (today's code, the champion's model)
Route = Literal["unchanged", "approval", "gate", "canary", "switch"]
Outcome = Literal["rolled-back", "rejected", "expired", "failed"]


class ServingChampion(TypedDict):
    """The model version serving all live traffic when the promotion began, and its function version."""

    version: str
    function_version: str


class Plan(TypedDict):
    """What :func:`pricepipe.promotion.plan.prepare` decided; every later step reads it (``$.plan``)."""

    execution_arn: str
    kind: Kind
    model_name: str
    model_version: str
    strategy: str
    route: Route
    reason: str
    note: str
    actor: str
    actor_source: str
    canary_percent: float
    bake_seconds: int
    approval_timeout_s: int
    function: str
    alias: str
    alias_before: AliasState
    champion: ServingChampion | None
    registered_champion: str | None
    stage_before: str
    evaluation: dict[str, Any] | None  # the training flow's comparison, when it started the promotion
    requested_at: str | None


class GateResult(TypedDict):
    """The metric gate's decision (``$.gate`` keeps passed, reason and source)."""

    passed: bool
    reason: str
    source: Literal["registered-metrics", "training-evaluation", "no-champion", "fresh-holdout"]
    challenger: NotRequired[dict[str, float]]
    champion: NotRequired[dict[str, Any]]


class Deployment(TypedDict):
    """The function version serving the model (``$.deployment``)."""

    function_version: str
    layer_arn: str
    reused: bool
    deployed_at: str | None


class DeployResult(ModelDeployment):
    """What the Deploy step returns: the deployment, and when."""

    deployed_at: str | None


class ServingVersion(TypedDict):
    """A function version serving a given model, found again or deployed anew (rollback's target)."""

    function_version: str
    layer_arn: str | None
    reused: bool


class ApprovalRequested(TypedDict):
    """What RequestApproval returns while the execution waits for a person."""

    status: Literal["pending"]
    expires_at: str | None


class CanaryStarted(TypedDict):
    """When the canary got its share (``$.canary_started`` keeps started_at) and the alias then."""

    started_at: str | None
    alias: AliasState


class CanaryCheck(TypedDict):
    """One measured check of a canary's health."""

    check: str
    value: float
    threshold: float
    passed: bool
    detail: NotRequired[str]


class CanaryVerdict(TypedDict):
    """The canary's health (``$.canary``): healthy, unhealthy, or wait (bake again)."""

    verdict: Literal["healthy", "unhealthy", "wait"]
    attempt: int
    reason: str
    checks: list[CanaryCheck]
    window: NotRequired[dict[str, str | None]]
    traffic: NotRequired[dict[str, Any]]


class Approval(TypedDict, total=False):
    """A person's yes, as ``pipectl approve`` sends it back to the waiting task (``$.approval``)."""

    approved_by: str
    actor_source: str
    reason: str


class StepError(TypedDict, total=False):
    """A failed step, as a Catch keeps it (``$.error``)."""

    Error: str
    Cause: str


class PromotionState(TypedDict):
    """The execution's state (``$``) as the steps that end a promotion, and the canary check, receive it."""

    plan: Plan
    deployment: NotRequired[Deployment]
    gate: NotRequired[GateResult]
    canary_started: NotRequired[CanaryStarted]
    canary: NotRequired[CanaryVerdict]
    approval: NotRequired[Approval]
    error: NotRequired[StepError]


class Promoted(TypedDict):
    """What Finalize returns (``$.result`` keeps outcome, reason, champion and previous)."""

    outcome: Literal["promoted"]
    reason: str
    champion: str
    previous: str | None
    alias: AliasState


class Abandoned(TypedDict):
    """What Abandon returns (``$.result`` keeps outcome and reason)."""

    outcome: Outcome
    reason: str
    alias: AliasState
