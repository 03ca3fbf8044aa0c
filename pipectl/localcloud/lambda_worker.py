"""One Lambda "container": imports a handler once, then serves invocations over a pipe.

Started by :mod:`pipectl.localcloud.lambdas` with the function's environment. Requests arrive as
JSON lines on stdin; each answer is one JSON line on the response file descriptor, keeping stdout
and stderr free for the handler's own logs, as in the Lambda runtime.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import uuid
from typing import Any

END_MARKER = "END RequestId: "  # as Lambda's runtime writes it after each invocation


class Context:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, request_id: str, timeout_s: float) -> None:
        env = os.environ
        self.function_name = env["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = env["AWS_LAMBDA_FUNCTION_VERSION"]
        self.invoked_function_arn = env["_LOCAL_LAMBDA_ARN"]
        self.memory_limit_in_mb = int(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
        self.aws_request_id = request_id
        self.log_group_name = env["AWS_LAMBDA_LOG_GROUP_NAME"]
        self.log_stream_name = env["AWS_LAMBDA_LOG_STREAM_NAME"]
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc)[-12:],
    }


def main() -> None:
    code_dir, handler, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    answers = os.fdopen(int(os.environ.pop("_LOCAL_LAMBDA_RESPONSE_FD")), "w", buffering=1)
    sys.path.insert(0, code_dir)
    module_name, _, function_name = handler.rpartition(".")
    init_error: dict[str, Any] | None = None
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # noqa: BLE001 - reported to every caller, as Lambda does
        init_error = _error(exc, "Runtime.ImportModuleError")
    answers.write(json.dumps({"ready": True}) + "\n")

    for line in sys.stdin:
        request = json.loads(line)
        if init_error is not None:
            answers.write(json.dumps({"error": init_error}) + "\n")
            continue
        context = Context(request.get("request_id") or str(uuid.uuid4()), timeout_s)
        try:
            result = function(request["event"], context)
            answer = {"result": result}
            text = json.dumps(answer, default=str)
        except Exception as exc:  # noqa: BLE001 - an unhandled error is the invocation's result
            text = json.dumps({"error": _error(exc)})
        sys.stderr.flush()
        # Lambda's runtime ends each invocation's log with this line; the local runtime waits for it
        # to be shipped before answering, so an invocation's output is in CloudWatch when it returns
        print(f"{END_MARKER}{context.aws_request_id}", flush=True)
        answers.write(text + "\n")


if __name__ == "__main__":
    main()
