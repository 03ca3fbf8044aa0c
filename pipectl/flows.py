"""Start a state machine on a target and wait for it, reporting the state it is in."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pipectl.target import Target

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


@dataclass
class Execution:
    arn: str
    name: str
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    state: str | None = None  # the state it waits in, when returned RUNNING

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def execution_name(flow: str) -> str:
    return f"{flow}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def start(target: Target, flow: str, payload: dict[str, Any], name: str | None = None) -> str:
    sfn = target.client("stepfunctions")
    return str(
        sfn.start_execution(
            stateMachineArn=target.state_machines[flow], name=name or execution_name(flow), input=json.dumps(payload)
        )["executionArn"]
    )


def wait(
    target: Target,
    arn: str,
    on_state: Callable[[str], None] | None = None,
    timeout_s: float = 3600,
    poll_s: float = 0.5,
    stop_at: Collection[str] = (),
) -> Execution:
    """Wait for the execution to end, or to enter one of the states ``stop_at`` (then still RUNNING,
    e.g. a manual promotion waiting for approval)."""
    sfn = target.client("stepfunctions")
    deadline = time.monotonic() + timeout_s
    last_state = ""
    while True:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] in TERMINAL:
            break
        if on_state is not None or stop_at:
            state = current_state(sfn, arn)
            if state and state != last_state:
                if on_state is not None:
                    on_state(state)
                last_state = state
            if state in stop_at:
                return Execution(arn=arn, name=described["name"], status="RUNNING", state=state)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{arn} still running after {timeout_s:.0f} s")
        time.sleep(poll_s)
    output = json.loads(described["output"]) if described.get("output") else None
    return Execution(
        arn=arn,
        name=described["name"],
        status=described["status"],
        output=output,
        error=described.get("error"),
        cause=described.get("cause"),
    )


def run(target: Target, flow: str, payload: dict[str, Any], on_state: Callable[[str], None] | None = None) -> Execution:
    return wait(target, start(target, flow, payload), on_state=on_state)


def current_state(sfn: Any, arn: str) -> str:
    events = sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=20)["events"]
    # newest first by id: moto returns the whole history in order, whatever the request says
    for event in sorted(events, key=lambda e: int(e["id"]), reverse=True):
        details = event.get("stateEnteredEventDetails")
        if details:
            return str(details["name"])
    return ""
