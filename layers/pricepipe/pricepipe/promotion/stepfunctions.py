"""Step Functions adapter: whether a promotion's execution still runs, and the answer to a waiting task."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pricepipe.errors import PricePipeError

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_stepfunctions import SFNClient

# The status of an execution Step Functions no longer knows (a restarted local cloud): it has ended.
GONE = "GONE"


class TaskClosed(PricePipeError):
    """The task a token stood for waits for no answer any more (timed out, unknown, already answered)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"the task is no longer open ({code})")
        self.code = code


def execution_status(sfn: SFNClient, execution_arn: str) -> str:
    """``RUNNING``, ``SUCCEEDED``, ``FAILED``, ... of an execution, or :data:`GONE`."""
    try:
        return sfn.describe_execution(executionArn=execution_arn)["status"]
    except sfn.exceptions.ExecutionDoesNotExist:
        return GONE


def _closed(sfn: SFNClient) -> tuple[type[ClientError], ...]:
    """The errors SendTaskSuccess/SendTaskFailure answer for a task that waits no more (AWS Step
    Functions API Reference, SendTaskSuccess "Errors"). moto accepts any token, so tests play these
    back with botocore's Stubber."""
    return (sfn.exceptions.TaskTimedOut, sfn.exceptions.InvalidToken, sfn.exceptions.TaskDoesNotExist)


def send_task_success(sfn: SFNClient, task_token: str, output: dict[str, Any]) -> None:
    """The waiting task succeeds with ``output``; :class:`TaskClosed` if it waits no more."""
    try:
        sfn.send_task_success(taskToken=task_token, output=json.dumps(output))
    except _closed(sfn) as exc:
        raise TaskClosed(exc.response["Error"]["Code"]) from exc


def send_task_failure(sfn: SFNClient, task_token: str, error: str, cause: dict[str, Any]) -> None:
    """The waiting task fails with ``error`` (what the state machine's Catch matches) and ``cause``;
    :class:`TaskClosed` if it waits no more."""
    try:
        sfn.send_task_failure(taskToken=task_token, error=error, cause=json.dumps(cause))
    except _closed(sfn) as exc:
        raise TaskClosed(exc.response["Error"]["Code"]) from exc
