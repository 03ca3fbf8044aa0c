"""Error types whose class names are part of the state machines' contract.

Lambda reports an unhandled exception's class name as the error type, and the ASL files retry or
catch on those names, so renaming a class here means editing the ASL files too.
"""

from __future__ import annotations


class PricePipeError(Exception):
    """Base class of the errors this package raises on purpose."""


class TransientError(PricePipeError):
    """A failure worth retrying: a dropped database connection, S3 throttling, a timeout.

    Retried by the state machines' ``Retry`` on ``TransientError``.
    """


class ContractError(PricePipeError):
    """A data contract that cannot be used: unreadable, inconsistent, or not matching the database."""


class ConfigurationError(PricePipeError):
    """Settings that cannot work together, named in the message."""


class BucketNotFound(ConfigurationError):
    """An S3 bucket the settings name does not exist: a deployment to fix, never worth a retry."""


class PromotionRefused(PricePipeError):
    """A promotion that must not go ahead (unknown version, another one running, ...), and why.

    Its class name is the error the promotion state machine fails with.
    """


class CommandError(PricePipeError):
    """An operator command that cannot be carried out as asked, with what to do instead.

    ``pipectl`` shows the message of an error by this name alone (the others with their name).
    """


class DeploymentError(PricePipeError, RuntimeError):
    """A deployment step that could not be done; nothing it started was left half-applied."""


class DriftInputError(PricePipeError):
    """The reference document or the current data cannot be compared (named in the message)."""
