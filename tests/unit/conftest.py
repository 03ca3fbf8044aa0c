"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber


@pytest.fixture
def lam() -> Iterator[tuple[Any, Stubber]]:
    """A Lambda client answering with AWS's documented response shapes (botocore's Stubber), every
    stubbed answer used by the end of the test."""
    client = boto3.client("lambda", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()
