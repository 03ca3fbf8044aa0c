"""Who a deployments row says acted, and how that is known: pipectl's side and the pipeline's."""

from __future__ import annotations

import pytest
import typer
from moto import mock_aws

from pipectl.commands.promotion import _actor
from pipectl.target import Target
from pricepipe.promotion.history import actor_of


def _target(kind: str, endpoint: str | None = None) -> Target:
    return Target(
        kind=kind, region="us-east-1", landing_bucket="l", lake_bucket="k", artifacts_bucket="a", endpoint=endpoint
    )


def test_on_aws_pipectl_names_the_caller_by_sts_and_refuses_to_go_on_without_one() -> None:
    with mock_aws():
        assert _actor(_target("aws")) == {"actor": "arn:aws:sts::123456789012:user/moto", "actor_source": "iam"}
    with pytest.raises(typer.Exit):  # nothing listens there: no identity, no command
        _actor(_target("aws", endpoint="http://127.0.0.1:9"))
    assert _actor(_target("local"))["actor_source"] == "local-user"


def test_a_request_names_its_actor_or_the_execution_that_started_it() -> None:
    assert actor_of({"actor": "alice", "actor_source": "iam"}) == ("alice", "iam")
    assert actor_of({"actor": "alice", "actor_source": "root"}) == ("alice", "unverified")
    assert actor_of({"actor": "alice"}) == ("alice", "unverified")
    parent = "arn:aws:states:us-east-1:1:execution:pricepipe-training:x"
    assert actor_of({"AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID": parent}) == (parent, "execution")
    assert actor_of({}) == ("pipeline", "pipeline")
    assert actor_of({}, default=("unknown", "unverified")) == ("unknown", "unverified")
