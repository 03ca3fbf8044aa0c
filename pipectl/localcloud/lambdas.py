"""Lambda invocations on the local cloud: the real handlers, in containers like Lambda's own.

moto's simple Lambda backend only echoes payloads; :meth:`LambdaRuntime.invoke` replaces it so that
direct invokes and Step Functions ``lambda:invoke`` tasks run the function's code package with the
function's environment. Each function version gets its own worker processes (containers), kept warm
between invocations and never shared between versions, so module state such as a loaded model or
the settings read at cold start belongs to one version, as on AWS. Aliases route by their
``RoutingConfig`` weights, which moto stores but does not apply.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import select
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from infrastructure import catalog
from pipectl.localcloud.lambda_worker import END_MARKER

WORKER_MODULE = "pipectl.localcloud.lambda_worker"
OUTPUT_GRACE_S = 5.0  # longest wait for an invocation's output after its answer (a worker that died sends none)
_SCRUBBED_PREFIXES = ("PRICEPIPE_", "AWS_", "POWERTOOLS_", "MOTO_", "DATABASE_URL", "MLFLOW_")


class InvocationError(Exception):
    """A failed invocation, carried as Lambda's error payload."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("errorMessage", ""))
        self.payload = payload


class Container:
    """One worker process holding one imported handler; its output goes to ``on_output``."""

    def __init__(
        self,
        code_dir: Path,
        handler: str,
        timeout_s: float,
        env: dict[str, str],
        on_output: Callable[[list[str]], None],
    ) -> None:
        self.timeout_s = timeout_s
        read_fd, write_fd = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(code_dir), handler, str(timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, "_LOCAL_LAMBDA_RESPONSE_FD": str(write_fd)},
            pass_fds=(write_fd,),
            text=True,
        )
        os.close(write_fd)
        self._answers = os.fdopen(read_fd, "r")
        self._shipped = threading.Condition()
        self._ended: set[str] = set()  # request ids whose END line has been shipped
        threading.Thread(target=_ship_output, args=(self.process, on_output, self._end), daemon=True).start()
        self._read(timeout=max(60.0, timeout_s))  # "ready": the init phase ran

    def invoke(self, event: Any, request_id: str) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"event": event, "request_id": request_id}) + "\n")
        self.process.stdin.flush()
        answer = self._read(timeout=self.timeout_s)
        with self._shipped:  # the invocation's output reaches the logs before its answer returns
            self._shipped.wait_for(lambda: request_id in self._ended or not self.alive, timeout=OUTPUT_GRACE_S)
            self._ended.discard(request_id)
        if "error" in answer:
            raise InvocationError(answer["error"])
        return answer["result"]

    def _read(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self._answers], [], [], timeout)
        if not ready:
            self.kill()
            raise InvocationError(
                {"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {timeout:.2f} seconds"}
            )
        line = self._answers.readline()
        if not line:
            code = self.process.wait()
            raise InvocationError(
                {"errorType": "Runtime.ExitError", "errorMessage": f"Runtime exited with error: exit status {code}"}
            )
        return dict(json.loads(line))

    def _end(self, request_id: str) -> None:
        with self._shipped:
            self._ended.add(request_id)
            self._shipped.notify_all()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            self.process.wait()
        self._answers.close()


@dataclass
class _Pool:
    idle: list[Container] = field(default_factory=list)
    busy: int = 0
    provisioned: int = 0  # containers kept initialised (provisioned concurrency)
    cond: threading.Condition = field(default_factory=threading.Condition)


class LambdaRuntime:
    """Runs invocations of moto-registered functions in local containers."""

    def __init__(
        self,
        work_dir: Path,
        cloud_env: Callable[[], dict[str, str]],
        cloudwatch: Callable[[str, str, list[str]], None] | None = None,
        on_invocation: Callable[[str, str | None, str, float, bool], None] | None = None,
        max_containers: int = 2,
    ) -> None:
        self.work_dir = work_dir
        self.cloud_env = cloud_env
        self.cloudwatch = cloudwatch  # (log group, log stream, lines): where CloudWatch Logs receive output
        # (function, qualifier invoked, version run, duration ms, failed): Lambda's own metrics
        self.on_invocation = on_invocation
        self.max_containers = max_containers
        self._pools: dict[tuple[str, str, str], _Pool] = {}
        self._lock = threading.Lock()
        self._logs: dict[str, IO[bytes]] = {}

    # moto calls this in place of LambdaSimpleBackend.invoke (self is the backend there)
    def moto_invoke(
        self, backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
    ) -> bytes:
        name, qualifier = _split(function_name, qualifier)
        version = self.route(backend, name, qualifier)
        fn = backend.get_function(name, None if version == "$LATEST" else version)
        event = json.loads(body) if body else {}
        response_headers["x-amz-executed-version"] = str(fn.version)
        if headers.get("X-Amz-Invocation-Type") == "Event":
            threading.Thread(target=self._invoke_quietly, args=(fn, event, backend, qualifier), daemon=True).start()
            return b""
        try:
            result = self.invoke(fn, event, backend, qualifier)
        except InvocationError as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(exc.payload).encode()
        return json.dumps(result).encode()

    def route(self, backend: Any, name: str, qualifier: str | None) -> str:
        """The version an invocation runs: an alias's weights decide between its versions."""
        if qualifier is None or qualifier == "$LATEST" or qualifier.isdigit():
            return qualifier or "$LATEST"
        alias = backend._lambdas.get_alias(qualifier, name)
        weights = (alias.routing_config or {}).get("AdditionalVersionWeights") or {}
        draw = random.random()  # noqa: S311 - traffic splitting, not security
        for version, weight in weights.items():
            if draw < float(weight):
                return str(version)
            draw -= float(weight)
        return str(alias.function_version)

    def provision(self, fn: Any, backend: Any, containers: int) -> int:
        """Provisioned concurrency for one function version: keep ``containers`` initialised (their
        cold start paid now, not by a request) and allow at least that many at once."""
        key = (fn.function_name, str(fn.version), fn.code_sha_256)
        with self._lock:
            pool = self._pools.setdefault(key, _Pool())
        with pool.cond:
            pool.provisioned = containers
            missing = max(0, containers - len(pool.idle) - pool.busy)
        started = [self._start(fn, backend) for _ in range(missing)]
        with pool.cond:
            pool.idle.extend(started)
            while len(pool.idle) > max(containers, self.max_containers):
                pool.idle.pop(0).kill()
            pool.cond.notify_all()
            return len(pool.idle) + pool.busy

    def invoke(self, fn: Any, event: Any, backend: Any, qualifier: str | None = None) -> Any:
        key = (fn.function_name, str(fn.version), fn.code_sha_256)
        with self._lock:
            pool = self._pools.setdefault(key, _Pool())
        container = self._acquire(pool, fn, backend)
        # Duration, as Lambda measures it: the handler's run, not the container's init
        began, failed = time.perf_counter(), True
        try:
            result = container.invoke(event, str(uuid.uuid4()))
            failed = False
            return result
        finally:
            self._release(pool, container)
            if self.on_invocation is not None:
                elapsed_ms = (time.perf_counter() - began) * 1000
                self.on_invocation(fn.function_name, qualifier, str(fn.version), elapsed_ms, failed)

    def _invoke_quietly(self, fn: Any, event: Any, backend: Any, qualifier: str | None = None) -> None:
        with contextlib.suppress(InvocationError):  # an async invocation's error lands in its log, as on AWS
            self.invoke(fn, event, backend, qualifier)

    def _acquire(self, pool: _Pool, fn: Any, backend: Any) -> Container:
        with pool.cond:
            while True:
                while pool.idle:
                    container = pool.idle.pop()
                    if container.alive:
                        pool.busy += 1
                        return container
                if pool.busy < max(self.max_containers, pool.provisioned):
                    pool.busy += 1
                    break
                pool.cond.wait()
        try:
            return self._start(fn, backend)
        except BaseException:
            with pool.cond:
                pool.busy -= 1
                pool.cond.notify()
            raise

    def _release(self, pool: _Pool, container: Container) -> None:
        with pool.cond:
            pool.busy -= 1
            if container.alive:
                pool.idle.append(container)
            pool.cond.notify()

    def _start(self, fn: Any, backend: Any) -> Container:
        code_dir = self._unpack(self.work_dir / "code" / fn.function_name / _safe(fn.code_sha_256), fn.code_bytes)
        # a layer's python/ goes on the path, as Lambda does with /opt/python
        layer_paths = []
        for layer in fn.layers or []:
            version = backend.layers_versions_by_arn(layer["Arn"])
            folder = self._unpack(self.work_dir / "layers" / version.name / str(version.version), version.code_bytes)
            layer_paths.append(str(folder / "python"))
        env = scrubbed_environment()
        env.update(self.cloud_env())
        env.update(fn.environment_vars or {})
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": fn.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": str(fn.version),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
                "AWS_LAMBDA_LOG_GROUP_NAME": catalog.log_group_name(fn.function_name),
                "AWS_LAMBDA_LOG_STREAM_NAME": f"local/{fn.version}/{uuid.uuid4().hex[:8]}",
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.run_time or 'python3.12'}",
                "_LOCAL_LAMBDA_ARN": fn.function_arn,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if layer_paths:
            # Lambda extracts layers in order into /opt and a later layer's file wins: the first path wins here
            layer_paths.reverse()
            env["PYTHONPATH"] = os.pathsep.join([*layer_paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        stream = env["AWS_LAMBDA_LOG_STREAM_NAME"]
        return Container(
            code_dir, fn.handler, float(fn.timeout), env, lambda lines: self._output(fn.function_name, stream, lines)
        )

    @staticmethod
    def _unpack(folder: Path, archive_bytes: bytes) -> Path:
        if not folder.is_dir():
            tmp = folder.with_name(folder.name + f".{uuid.uuid4().hex[:6]}")
            with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
                archive.extractall(tmp)
            with contextlib.suppress(OSError):  # another container unpacked it first
                tmp.rename(folder)
        return folder

    def _output(self, function_name: str, stream: str, lines: list[str]) -> None:
        self._log(function_name).write(("\n".join(lines) + "\n").encode())
        if self.cloudwatch is not None:
            self.cloudwatch(catalog.log_group_name(function_name), stream, lines)

    def _log(self, function_name: str) -> IO[bytes]:
        with self._lock:
            if function_name not in self._logs:
                path = self.work_dir / "logs" / f"{function_name}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                self._logs[function_name] = path.open("ab", buffering=0)
            return self._logs[function_name]

    def log_path(self, function_name: str) -> Path:
        return self.work_dir / "logs" / f"{function_name}.log"

    def shutdown(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            with pool.cond:
                for container in pool.idle:
                    container.kill()
                pool.idle.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()


def _ship_output(
    process: subprocess.Popen[str], on_output: Callable[[list[str]], None], on_end: Callable[[str], None]
) -> None:
    """Forward a worker's output lines in small batches (Lambda's log agent does the same); an
    invocation's END line ships its batch at once and is reported to ``on_end``.

    Reads the pipe's raw bytes: ``select`` sees only the pipe, so lines a text reader had already
    buffered would wait there, unshipped, until the worker printed again.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    batch: list[str] = []
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            batch.extend(line.decode("utf-8", "replace") for line in lines)
            ended = [line.removeprefix(END_MARKER) for line in batch if line.startswith(END_MARKER)]
            if len(batch) < 200 and not ended:
                continue
        else:
            ended = []
        if batch:
            on_output(batch)
            batch = []
        for request_id in ended:
            on_end(request_id)
    if pending:
        batch.append(pending.decode("utf-8", "replace"))
    if batch:
        on_output(batch)


def scrubbed_environment() -> dict[str, str]:
    """This process's environment without the host's AWS, database and pipeline settings: a
    function or job gets its configuration from its own definition, as in the cloud."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}


def _safe(digest: str) -> str:
    return digest.replace("/", "_").replace("+", "-")[:32]


def _split(function_name: str, qualifier: str | None) -> tuple[str, str | None]:
    """Function name and qualifier from a name, ``name:qualifier`` or an ARN."""
    if function_name.startswith("arn:"):
        parts = function_name.split(":")
        return parts[6], (parts[7] if len(parts) > 7 else qualifier)
    if ":" in function_name:
        name, _, qual = function_name.partition(":")
        return name, qual
    return function_name, qualifier
