"""``python -m pipectl.localcloud.daemon``: the long-running local cloud behind ``pipectl local up``.

Starts moto, brings up the database (``DATABASE_URL`` or embedded), "deploys" the pipeline (creates
the resources, then runs the migrate function as CloudFormation would run the custom resource),
restores saved S3 objects, serves the registry's champion again (its Lambda versions died with the
previous run), starts the HTTP gateway in front of the API, writes ``state.json`` for the CLI, and
serves until SIGTERM/SIGINT, when it saves S3 and stops. A signal while it is still starting stops
it at once (nothing saved); a taken port ends it at once with exit status 3 and a message naming
the port and its holder. It removes ``state.json`` last, once its workers have exited.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pipectl.localcloud import snapshot
from pipectl.localcloud.auth import authorizer_of
from pipectl.localcloud.cloud import LocalCloud
from pipectl.localcloud.gateway import INTEGRATION_TIMEOUT_S, Gateway, moto_api_keys
from pipectl.localcloud.ports import FAILED, PORT_TAKEN_EXIT, PortTaken
from pipectl.localcloud.postgres import database_url
from pipectl.localcloud.provision import Resources, provision

STATE_FILE = "state.json"
API_KEY_FILE = "api-key"
# A laptop's canary bakes for seconds, not the minutes production traffic needs: its traffic is the
# demo's. Promotion settings set in the daemon's own environment win (e.g. PRICEPIPE_CANARY_PERCENT).
LOCAL_FUNCTION_SETTINGS = {"PRICEPIPE_CANARY_BAKE_SECONDS": "20"}
FORWARDED_SETTINGS = (
    "PRICEPIPE_PROMOTION_STRATEGY",
    "PRICEPIPE_CANARY_",
    "PRICEPIPE_MANUAL_APPROVAL_",
    "PRICEPIPE_AUTO_",
)


def function_settings() -> dict[str, str]:
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_SETTINGS)}
    return LOCAL_FUNCTION_SETTINGS | forwarded


def deploy(cloud: LocalCloud, state_dir: Path, contract: str) -> Resources:
    """Everything ``cdk deploy`` would do, on the local cloud."""
    key_file = state_dir / API_KEY_FILE  # the same key across restarts: clients keep working
    resources = provision(
        cloud,
        database_url(state_dir),
        contract=contract,
        function_settings=function_settings(),
        api_key=key_file.read_text().strip() if key_file.exists() else None,
    )
    key_file.write_text(resources.api_key)
    key_file.chmod(0o600)
    run_migrations(cloud, resources)
    snapshot.restore(cloud.client("s3"), buckets(resources), state_dir / "s3")
    restore_serving(cloud, resources)
    return resources


def restore_serving(cloud: LocalCloud, resources: Resources) -> dict[str, Any] | None:
    """The champion back on the ``live`` alias of a fresh local cloud (its Lambda versions died with the
    previous run); returns what was deployed (None: no champion yet)."""
    from pricepipe import db, promotion
    from pricepipe.settings import Settings

    settings = Settings(database_url=resources.database_url)
    with db.connect(resources.database_url, autocommit=True) as conn:
        return promotion.rollback.restore_champion(
            conn, cloud.client("lambda"), cloud.client("s3"), cloud.client("ssm"), settings, actor="local-cloud"
        )


def start_gateway(cloud: LocalCloud, state_dir: Path, port: int) -> Gateway:
    """The API's HTTP front door on 127.0.0.1:<port> (another free port if that one is taken)."""
    from botocore.config import Config

    from infrastructure import catalog
    from pricepipe.settings import Settings

    settings = Settings()
    log_path = state_dir / "logs" / "gateway-access.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("a", buffering=1)

    def access_log(line: str) -> None:
        log.write(line + "\n")

    # API Gateway does not retry a Lambda integration, and gives up after its integration timeout
    integration = Config(retries={"total_max_attempts": 1}, read_timeout=INTEGRATION_TIMEOUT_S, connect_timeout=5)
    gateway = Gateway(
        cloud.client("lambda", integration),
        catalog.function(catalog.SERVING_FUNCTION).name,
        catalog.LIVE_ALIAS,
        moto_api_keys(cloud.client("apigateway")),
        authorizer=authorizer_of(cloud),
        rate=settings.api_throttle_rate,
        burst=settings.api_throttle_burst,
        port=port,
        access_log=access_log,
    )
    return gateway.start(fall_back_to_any_port=True)


def run_migrations(cloud: LocalCloud, resources: Resources) -> dict[str, Any]:
    """Invoke the migrate function with the event CloudFormation sends a custom resource."""
    event = {"RequestType": "Create", "ResourceProperties": {}, "LogicalResourceId": "DatabaseSchema"}
    response = cloud.client("lambda").invoke(FunctionName=resources.functions["migrate"], Payload=json.dumps(event))
    payload = json.loads(response["Payload"].read())
    if response.get("FunctionError"):
        raise RuntimeError(f"database migration failed: {payload.get('errorType')}: {payload.get('errorMessage')}")
    return dict(payload)


def buckets(resources: Resources) -> list[str]:
    return [resources.landing_bucket, resources.lake_bucket, resources.artifacts_bucket]


WORKER_GRACE_S = 10.0  # a worker still running when the daemon stops gets this long after SIGTERM


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=4577)
    parser.add_argument("--contract", default="hotel_rates")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("PIPECTL_GATEWAY_PORT", "8000")))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    state_dir: Path = args.state_dir.resolve()
    state_file = state_dir / STATE_FILE

    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if serving.is_set():
            stop.set()  # serving: save S3, then stop
        elif not stop.is_set():
            stop.set()  # still starting: give up at once, wherever startup is (nothing to save yet)
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"local cloud starting: process {os.getpid()}, state in {state_dir}", flush=True)

    cloud = LocalCloud(state_dir, port=args.port)
    gateway: Gateway | None = None
    try:
        cloud.start()
        resources = deploy(cloud, state_dir, args.contract)
        gateway = start_gateway(cloud, state_dir, args.gateway_port)
        resources.gateway_url = gateway.url
        serving.set()
        state_file.touch(mode=0o600)  # it holds the first API client's secret and the API key
        state_file.chmod(0o600)
        state_file.write_text(json.dumps({"pid": os.getpid(), **resources.to_dict()}, indent=2))
        print(f"local cloud ready at {cloud.endpoint}; API at {gateway.url}", flush=True)
        stop.wait()
        saved = snapshot.save(cloud.client("s3"), buckets(resources), state_dir / "s3")
        print(f"saved {saved} S3 objects", flush=True)
    except PortTaken as exc:
        print(f"{FAILED}{exc}", file=sys.stderr, flush=True)
        raise SystemExit(PORT_TAKEN_EXIT) from None
    except Exception as exc:
        print(f"{FAILED}{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        serving.clear()
        stop.set()  # a signal from here on changes nothing: the daemon is stopping
        try:
            if gateway is not None:
                gateway.stop()
            cloud.stop()
        finally:
            end_workers()
            state_file.unlink(missing_ok=True)  # last: `local down` and `local up` see a stopped cloud


def end_workers() -> None:
    """Stop every process this daemon started that still runs (a worker busy with an invocation
    when the cloud stopped), and reap them, so none outlives the daemon."""
    import psutil

    from pipectl.localcloud.ports import workers

    left = workers(psutil.Process())
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(left, timeout=WORKER_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=WORKER_GRACE_S)


if __name__ == "__main__":
    main()
