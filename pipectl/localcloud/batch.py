"""Batch jobs on the local cloud: the job definition's command, really run, as a local process.

moto's simple Batch backend marks every job SUCCEEDED without running anything.
:meth:`BatchRuntime.moto_start` replaces that: the job goes RUNNING, its container command (with
``Ref::`` parameters substituted and overrides applied) runs in the repository with the job's
environment, and the job ends SUCCEEDED or FAILED by the exit code, so ``batch:submitJob.sync``
in a state machine waits for real work and sees real failures. ``python`` in a command is this
interpreter: the training container's Python packages are the project's virtualenv here.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipectl.localcloud.lambdas import scrubbed_environment


class BatchRuntime:
    def __init__(self, work_dir: Path, cloud_env: Callable[[], dict[str, str]], root: Path) -> None:
        self.work_dir = work_dir
        self.cloud_env = cloud_env
        self.root = root
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # moto calls this in place of BatchSimpleBackend._mark_job_as_finished (self is the backend there)
    def moto_start(self, backend: Any, include_start_attempt: bool, job: Any) -> None:
        backend.backend._jobs[job.job_id] = job
        job.job_started_at = dt.datetime.now()
        job.log_stream_name = job._stream_name
        if include_start_attempt:
            job._start_attempt()
        if job.job_definition.container_properties is None:  # array parents and non-container jobs
            job._mark_stopped(success=True)
            return
        job.status = "RUNNING"
        threading.Thread(target=self._run, args=(job,), name=f"batch-{job.job_id}", daemon=True).start()

    def command(self, job: Any) -> list[str]:
        command = [str(part) for part in job._add_parameters_to_command(job._get_container_property("command", []))]
        if command and command[0] in ("python", "python3", "python3.12"):
            command[0] = sys.executable
        return command

    def environment(self, job: Any) -> dict[str, str]:
        env = scrubbed_environment()
        env.update(self.cloud_env())
        for item in job._get_container_property("environment", []):
            env[item["name"]] = item["value"]
        env.update({"AWS_BATCH_JOB_ID": job.job_id, "AWS_BATCH_JQ_NAME": job.job_queue.name, "PYTHONUNBUFFERED": "1"})
        return env

    def log_path(self, job_definition_name: str) -> Path:
        return self.work_dir / "logs" / f"batch-{job_definition_name}.log"

    def _run(self, job: Any) -> None:
        timeout = (job.timeout or {}).get("attemptDurationSeconds")
        log_path = self.log_path(job.job_definition.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            command = self.command(job)
            with log_path.open("ab") as log:
                log.write(f"--- job {job.job_id} ({job.job_name}): {' '.join(command)}\n".encode())
                log.flush()
                process = subprocess.Popen(
                    command, cwd=self.root, env=self.environment(job), stdout=log, stderr=subprocess.STDOUT
                )
                with self._lock:
                    self._processes[job.job_id] = process
                try:
                    code = process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                    job.job_stopped_reason = f"Job attempt duration exceeded timeout ({timeout} s)"
        except OSError as exc:
            code = 127
            job.job_stopped_reason = f"CannotStartContainerError: {exc}"
        finally:
            with self._lock:
                self._processes.pop(job.job_id, None)
        job.exit_code = code
        if code != 0 and job.job_stopped_reason is None:
            job.job_stopped_reason = f"Essential container in task exited (exit code {code})"
        job._mark_stopped(success=code == 0)

    def terminate(self, job_id: str) -> bool:
        with self._lock:
            process = self._processes.get(job_id)
        if process is None:
            return False
        process.terminate()
        return True

    def shutdown(self) -> None:
        with self._lock:
            running = list(self._processes.values())
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
