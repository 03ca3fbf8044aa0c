"""``python -m pipectl.localcloud.daemon``: the long-running local cloud behind ``pipectl local up``.

Starts moto, brings up the database (``DATABASE_URL`` or embedded), "deploys" the pipeline (creates
the resources, then runs the migrate function as CloudFormation would run the custom resource),
restores saved S3 objects, writes ``state.json`` for the CLI, and serves until SIGTERM/SIGINT, when
it saves S3 and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pipectl.localcloud import snapshot
from pipectl.localcloud.cloud import LocalCloud
from pipectl.localcloud.postgres import database_url
from pipectl.localcloud.provision import Resources, provision

STATE_FILE = "state.json"


def deploy(cloud: LocalCloud, state_dir: Path, contract: str) -> Resources:
    """Everything ``cdk deploy`` would do, on the local cloud."""
    resources = provision(cloud, database_url(state_dir), contract=contract)
    run_migrations(cloud, resources)
    snapshot.restore(cloud.client("s3"), buckets(resources), state_dir / "s3")
    return resources


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=4577)
    parser.add_argument("--contract", default="hotel_rates")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    state_file = state_dir / STATE_FILE

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    cloud = LocalCloud(state_dir, port=args.port).start()
    try:
        resources = deploy(cloud, state_dir, args.contract)
        state_file.write_text(json.dumps({"pid": os.getpid(), **resources.to_dict()}, indent=2))
        print(f"local cloud ready at {cloud.endpoint}", flush=True)
        stop.wait()
        saved = snapshot.save(cloud.client("s3"), buckets(resources), state_dir / "s3")
        print(f"saved {saved} S3 objects", flush=True)
    except Exception as exc:
        print(f"local cloud failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        state_file.unlink(missing_ok=True)
        cloud.stop()


if __name__ == "__main__":
    main()
