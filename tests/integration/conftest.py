"""Fixtures of the integration tests: moto's Lambda with the serving function (see aws_lambda)."""

from tests.integration.aws_lambda import aws, lam

__all__ = ["aws", "lam"]
