"""The local cloud's process: moto in server mode on loopback, patched to run our code for real.

Only one LocalCloud can run per process: moto's backends and configuration are process-global.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

_active: LocalCloud | None = None
_active_lock = threading.Lock()
_logs_lock = threading.Lock()


class LocalCloud:
    """moto on ``host:port`` with its Step Functions engine on and our Lambda and Batch runtimes."""

    def __init__(self, state_dir: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self._server: Any = None
        self._tokens: Any = None  # the user pools' token endpoint (auth.TokenEndpoint)
        from infrastructure.catalog import ROOT
        from pipectl.localcloud.batch import BatchRuntime
        from pipectl.localcloud.lambdas import LambdaRuntime

        self.lambdas = LambdaRuntime(
            self.state_dir, self.client_env, cloudwatch=_put_log_lines, on_invocation=_put_lambda_metrics
        )
        self.batch = BatchRuntime(self.state_dir, self.client_env, ROOT)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint of the cloud's user pools (client-credentials grant)."""
        if self._tokens is None:
            raise RuntimeError("the local cloud is not running")
        return str(self._tokens.url)

    def client_env(self) -> dict[str, str]:
        """Environment under which the AWS SDK (and anything built on it) talks to this cloud."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
        }

    def client(self, service: str, config: Config | None = None) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=config or Config(retries={"mode": "standard"}, read_timeout=900),
        )

    def start(self) -> LocalCloud:
        global _active
        with _active_lock:
            if _active is not None:
                raise RuntimeError("a local cloud is already running in this process")
            _active = self
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            _configure_moto(self)
            server = _moto_server_class()(ip_address=self.host, port=self.port, verbose=False)
            server.start()
        except BaseException:
            with _active_lock:
                _active = None
            raise
        self._server = server
        self.port = server.get_host_and_port()[1]
        # the Step Functions engine's own clients call localhost:$MOTO_PORT
        os.environ["MOTO_PORT"] = str(self.port)
        from pipectl.localcloud.auth import TokenEndpoint

        self._tokens = TokenEndpoint(host=self.host).start()
        return self

    def stop(self) -> None:
        global _active
        self.batch.shutdown()
        self.lambdas.shutdown()
        if self._tokens is not None:
            self._tokens.stop()
            self._tokens = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()  # moto's state is process-global: leave none behind
        with _active_lock:
            _active = None

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _moto_server_class() -> Any:
    from moto.server import ThreadedMotoServer

    class MotoServer(ThreadedMotoServer):
        """moto's threaded server, bound in the calling thread: moto's own ``start`` binds in its
        server thread and waits for it, forever when the port is taken (the thread dies of the
        bind error and never says it is ready). Here a taken port is
        :class:`~pipectl.localcloud.ports.PortTaken` at once."""

        def start(self) -> None:
            import threading

            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server

            from pipectl.localcloud.ports import bind

            # werkzeug would answer a taken port with sys.exit(1): bind here, and hand it the socket
            with bind(self._port, self._ip_address) as sock:
                self._server = make_server(
                    self._ip_address,
                    sock.getsockname()[1],
                    DomainDispatcherApplication(create_backend_app),
                    True,
                    request_handler=MotoRequestHandler,
                    fd=sock.fileno(),  # werkzeug serves a duplicate of it
                )
            self._server_ready_event.set()
            self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
            self._thread.start()

    return MotoServer


def _configure_moto(cloud: LocalCloud) -> None:  # noqa: C901, PLR0915 - each moto patch is one step; the list is the local cloud's contract with moto 5.2.5
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.core.models import default_user_config

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    default_user_config["lambda"] = {"use_docker": False}
    default_user_config["batch"] = {"use_docker": False}

    def invoke(
        backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
    ) -> bytes:
        active = _active
        if active is None:
            raise RuntimeError("no local cloud is running")
        return active.lambdas.moto_invoke(backend, function_name, qualifier, body, headers, response_headers)

    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign,assignment]

    from moto.awslambda.responses import LambdaResponse

    original_invoke = LambdaResponse.invoke
    if not getattr(original_invoke, "_reads_qualifier", False):

        def invoke_response(response: Any) -> Any:
            # moto reads ?qualifier= but the SDK sends ?Qualifier=: without this every invoke with a
            # Qualifier (an alias, a version) would run $LATEST
            if "Qualifier" in response.querystring and "qualifier" not in response.querystring:
                response.querystring["qualifier"] = response.querystring["Qualifier"]
            return original_invoke(response)

        invoke_response._reads_qualifier = True  # type: ignore[attr-defined]
        LambdaResponse.invoke = invoke_response  # type: ignore[method-assign]

    def deliver_logs(
        backend: Any, function_arn: str, filter_name: str, log_group_name: str, log_stream_name: str, log_events: Any
    ) -> None:
        """A CloudWatch Logs subscription delivering to a Lambda: the package's delivery event, with
        events matching the filter's pattern only (moto sends all and runs the function in Docker)."""
        active = _active
        if active is None:
            return
        from moto.logs.models import logs_backends
        from moto.logs.utils import EventMessageFilter

        from pricepipe.serving.prediction_log import subscription_event

        group = logs_backends[backend.account_id][backend.region_name].groups[log_group_name]
        pattern = EventMessageFilter(group.subscription_filters[filter_name].filter_pattern)
        matching = [event for event in log_events if pattern.matches(event["message"])]
        if not matching:
            return
        event = subscription_event(
            matching,
            log_group=log_group_name,
            log_stream=log_stream_name,
            owner=backend.account_id,
            filter_name=filter_name,
        )
        active.lambdas.moto_invoke(
            backend,
            function_arn,
            None,
            json.dumps(event),
            {"X-Amz-Invocation-Type": "Event"},
            {},
        )

    _route_provisioned_concurrency()
    LambdaSimpleBackend.send_log_event = deliver_logs  # type: ignore[method-assign,assignment]

    from moto.batch_simple.models import BatchSimpleBackend

    def start_job(backend: Any, include_start_attempt: bool, job: Any) -> None:
        active = _active
        if active is None:
            raise RuntimeError("no local cloud is running")
        active.batch.moto_start(backend, include_start_attempt, job)

    BatchSimpleBackend._mark_job_as_finished = start_job  # type: ignore[method-assign,assignment]
    _normalise_service_tasks()
    _percentile_statistics()

    # SendTaskFailure's cause (why a person rejected, say) reaches the Catch in AWS; moto drops it
    from moto.stepfunctions.responses import StepFunctionResponse

    if not getattr(StepFunctionResponse.send_task_failure, "_keeps_cause", False):

        def send_task_failure(response: Any) -> Any:
            from moto.core.responses import EmptyResult

            response.stepfunction_backend.send_task_failure(
                response._get_param("taskToken"), error=response._get_param("error"), cause=response._get_param("cause")
            )
            return EmptyResult()

        send_task_failure._keeps_cause = True  # type: ignore[attr-defined]
        StepFunctionResponse.send_task_failure = send_task_failure  # type: ignore[method-assign,assignment]

    # AWS names an unnamed execution with a UUID; moto leaves it None (and $$.Execution.Name with it)
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original_start = StepFunctionsParserBackend.start_execution
    if not getattr(original_start, "_names_executions", False):

        def start_execution(backend: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
            return original_start(backend, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

        start_execution._names_executions = True  # type: ignore[attr-defined]
        StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign,assignment]

    logging.getLogger("werkzeug").setLevel(logging.WARNING)


_provisioned: dict[tuple[str, str], dict[str, Any]] = {}  # (function, qualifier) -> config (READY)
# Polls of a config that still answer IN_PROGRESS: AWS allocates in the background (minutes), so a
# caller must wait for READY; the local cloud makes it wait one poll, so tests prove the wait.
_pending_polls: dict[tuple[str, str], int] = {}
IN_PROGRESS_POLLS = 1


def _in_progress(config: dict[str, Any]) -> dict[str, Any]:
    """A config as AWS shows it while allocating: requested, nothing available yet."""
    return {
        **config,
        "AvailableProvisionedConcurrentExecutions": 0,
        "AllocatedProvisionedConcurrentExecutions": 0,
        "Status": "IN_PROGRESS",
    }


def _route_provisioned_concurrency() -> None:
    """moto has no provisioned-concurrency API: answer Put/Get/Delete ProvisionedConcurrencyConfig
    and keep that many containers of each version the qualifier routes to initialised. A new config
    is IN_PROGRESS for the PUT's answer and :data:`IN_PROGRESS_POLLS` GETs, then READY."""
    import datetime as dt

    from moto.awslambda import urls
    from moto.awslambda.utils import get_backend

    pattern = r"{0}/(?P<api_version>[^/]+)/functions/(?P<function_name>[\w_:%-]+)/provisioned-concurrency/?$"

    def handle(request: Any, full_url: str, headers: Any) -> tuple[int, dict[str, str], str]:
        from urllib.parse import parse_qs, unquote, urlparse

        url = urlparse(full_url)
        name = unquote(url.path.rstrip("/").split("/")[-2])
        qualifier = (parse_qs(url.query).get("Qualifier") or [""])[0]
        key = (name.split(":")[-1] if not name.startswith("arn:") else name.split(":")[6], qualifier)
        json_headers = {"content-type": "application/json"}
        if request.method == "GET":
            if key not in _provisioned:
                error = {"Type": "User", "message": "No Provisioned Concurrency Config found for this function"}
                return (
                    404,
                    {**json_headers, "x-amzn-errortype": "ProvisionedConcurrencyConfigNotFoundException"},
                    json.dumps(error),
                )
            if _pending_polls.get(key, 0) > 0:
                _pending_polls[key] -= 1
                return 200, json_headers, json.dumps(_in_progress(_provisioned[key]))
            return 200, json_headers, json.dumps(_provisioned[key])
        if request.method == "DELETE":
            _provisioned.pop(key, None)
            _pending_polls.pop(key, None)
            return 204, json_headers, ""
        active = _active
        if active is None:
            return 503, json_headers, json.dumps({"message": "no local cloud"})
        wanted = int(json.loads(request.data or b"{}").get("ProvisionedConcurrentExecutions", 0))
        backend = get_backend(ACCOUNT, REGION)
        alias = backend._lambdas.get_alias(qualifier, key[0]) if not qualifier.isdigit() else None
        versions = {qualifier} if alias is None else {str(alias.function_version)}
        if alias is not None:
            routing: Any = alias.routing_config or {}
            versions |= {str(v) for v in (routing.get("AdditionalVersionWeights") or {})}
        allocated = min(
            active.lambdas.provision(backend.get_function(key[0], version), backend, wanted) for version in versions
        )
        _provisioned[key] = {
            "RequestedProvisionedConcurrentExecutions": wanted,
            "AvailableProvisionedConcurrentExecutions": allocated,
            "AllocatedProvisionedConcurrentExecutions": allocated,
            "Status": "READY",
            "LastModified": dt.datetime.now(dt.UTC).isoformat(),
        }
        _pending_polls[key] = IN_PROGRESS_POLLS
        return 202, json_headers, json.dumps(_in_progress(_provisioned[key]))

    urls.url_paths[pattern] = handle


def _put_log_lines(group: str, stream: str, lines: list[str]) -> None:
    """Function output into moto's CloudWatch Logs (so log queries and subscriptions work)."""
    from moto.logs.models import logs_backends

    backend = logs_backends[ACCOUNT][REGION]
    with _logs_lock:
        if group not in backend.groups:
            backend.create_log_group(group, tags={})
        if stream not in backend.groups[group].streams:
            backend.create_log_stream(group, stream)
    now = int(time.time() * 1000)
    backend.put_log_events(group, stream, [{"timestamp": now, "message": line} for line in lines if line])
    for line in lines:
        if '"_aws"' in line:
            _put_emf_metrics(line)


def _put_emf_metrics(line: str) -> None:
    """CloudWatch turns Embedded Metric Format log lines into metrics; moto does not, so do it here."""
    import datetime as dt

    from moto.cloudwatch.models import cloudwatch_backends

    try:
        document = json.loads(line)
        directives = document["_aws"]["CloudWatchMetrics"]
        # naive UTC, as moto keeps every timestamp (an aware one breaks its GetMetricData comparisons)
        when = dt.datetime.fromtimestamp(document["_aws"]["Timestamp"] / 1000, tz=dt.UTC).replace(tzinfo=None)
    except (ValueError, KeyError, TypeError):
        return
    backend = cloudwatch_backends[ACCOUNT][REGION]
    for directive in directives:
        for dimension_set in directive.get("Dimensions", [[]]):
            dimensions = [{"Name": name, "Value": str(document[name])} for name in dimension_set if name in document]
            data = []
            for definition in directive.get("Metrics", []):
                values = document.get(definition["Name"])
                for value in values if isinstance(values, list) else [values]:
                    if isinstance(value, int | float):
                        data.append(
                            {
                                "MetricName": definition["Name"],
                                "Value": float(value),
                                "Unit": definition.get("Unit", "None"),
                                "Dimensions": dimensions,
                                "Timestamp": when,
                            }
                        )
            if data:
                backend.put_metric_data(directive["Namespace"], data)


def _put_lambda_metrics(function: str, qualifier: str | None, version: str, duration_ms: float, error: bool) -> None:
    """What Lambda publishes to CloudWatch for every invocation (namespace ``AWS/Lambda``): Invocations,
    Errors and Duration per function, per qualified resource, and, for an alias, per executed
    version (the dimension a canary is judged on). moto publishes none of them."""
    import datetime as dt

    from moto.cloudwatch.models import cloudwatch_backends

    dimension_sets = [[{"Name": "FunctionName", "Value": function}]]
    if qualifier:
        resource = [*dimension_sets[0], {"Name": "Resource", "Value": f"{function}:{qualifier}"}]
        dimension_sets.append(resource)
        if not qualifier.isdigit() and qualifier != "$LATEST":
            dimension_sets.append([*resource, {"Name": "ExecutedVersion", "Value": version}])
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # naive UTC, as moto keeps timestamps
    data = [
        {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions, "Timestamp": now}
        for dimensions in dimension_sets
        for name, value, unit in (
            ("Invocations", 1.0, "Count"),
            ("Errors", 1.0 if error else 0.0, "Count"),
            ("Duration", duration_ms, "Milliseconds"),
        )
    ]
    cloudwatch_backends[ACCOUNT][REGION].put_metric_data("AWS/Lambda", data)


def _percentile_statistics() -> None:
    """CloudWatch answers ``p99`` (any ``pNN``) for metrics published as single values, as EMF and
    Lambda's Duration are; moto knows only Sum, Average, Minimum, Maximum and SampleCount."""
    import numpy as np
    from moto.cloudwatch.models import Statistics

    original = Statistics.get_statistics_for_type
    if getattr(original, "_percentiles", False):
        return

    def get_statistics_for_type(statistics: Any, stat: str) -> Any:
        if stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit():
            values = statistics.metric_single_values_list
            return float(np.percentile(values, float(stat[1:]))) if values else None
        return original(statistics, stat)

    get_statistics_for_type._percentiles = True  # type: ignore[attr-defined]
    Statistics.get_statistics_for_type = get_statistics_for_type  # type: ignore[method-assign,assignment]


def _normalise_service_tasks() -> None:
    """Service integrations pass ASL's PascalCase parameters (``batch:submitJob``: JobName,
    ContainerOverrides with Environment Name/Value; ``states:startExecution``: StateMachineArn,
    Input); boto3 wants the API's own member names (jobName, stateMachineArn). moto's engine leaves
    them as they are, so map each key onto the operation's input shape, and the response's keys back
    to the PascalCase Step Functions returns (JobId, ExecutionArn)."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_batch import (
        StateTaskServiceBatch,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
        StateTaskServiceSfn,
    )

    _normalise_service_task(StateTaskServiceBatch, "batch")
    _normalise_service_task(StateTaskServiceSfn, "stepfunctions")


def _normalise_service_task(task_class: Any, service: str) -> None:  # noqa: C901 - mirrors moto's parameter normalisation, one branch per casing rule
    import botocore.session

    if getattr(task_class._normalise_parameters, "_normalises", False):
        return
    model = botocore.session.get_session().get_service_model(service)
    own_parameters = task_class._normalise_parameters  # e.g. the Sfn task serialises Input to JSON first

    def convert(value: Any, shape: Any) -> Any:
        if shape.type_name == "structure" and isinstance(value, dict):
            members = {name.lower(): name for name in shape.members}
            out = {}
            for key, item in value.items():
                name = members.get(key.lower(), key)
                out[name] = convert(item, shape.members[name]) if name in shape.members else item
            return out
        if shape.type_name == "list" and isinstance(value, list):
            return [convert(item, shape.member) for item in value]
        if shape.type_name == "map" and isinstance(value, dict):
            return {key: convert(item, shape.value) for key, item in value.items()}
        return value

    def normalise(
        task: Any, parameters: dict[str, Any], boto_service_name: Any = None, service_action_name: Any = None
    ) -> None:
        own_parameters(task, parameters, boto_service_name, service_action_name)
        action = service_action_name or task._get_boto_service_action()
        operation = model.operation_model("".join(part.capitalize() for part in action.split("_")))
        converted = convert(dict(parameters), operation.input_shape)
        parameters.clear()
        parameters.update(converted)

    normalise._normalises = True  # type: ignore[attr-defined]

    def pascal(value: Any, shape: Any) -> None:
        """In place: Step Functions returns service responses with PascalCase member names (JobId,
        Status); map keys (job parameters, tags) are data and keep their case. The engine holds
        references into the response, so it must be changed where it is."""
        if shape.type_name == "structure" and isinstance(value, dict):
            items = list(value.items())
            value.clear()
            for key, item in items:
                if key in shape.members:
                    pascal(item, shape.members[key])
                value[key[:1].upper() + key[1:]] = item
        elif shape.type_name == "list" and isinstance(value, list):
            for item in value:
                pascal(item, shape.member)
        elif shape.type_name == "map" and isinstance(value, dict):
            for item in value.values():
                pascal(item, shape.value)

    def normalise_response(
        task: Any, response: Any, boto_service_name: Any = None, service_action_name: Any = None
    ) -> None:
        action = service_action_name or task._get_boto_service_action()
        pascal(response, model.operation_model("".join(p.capitalize() for p in action.split("_"))).output_shape)

    task_class._normalise_parameters = normalise
    task_class._normalise_response = normalise_response
