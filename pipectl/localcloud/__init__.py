"""The local cloud: AWS control-plane APIs from moto on loopback, running the real code.

moto (server mode, Step Functions engine on) holds buckets, secrets, functions, state machines and
Batch queues; Lambda invocations run the real handlers from ``functions/`` in worker processes, one
per function version as Lambda keeps containers; Batch jobs run their command as local processes.
"""

from pipectl.localcloud.cloud import LocalCloud

__all__ = ["LocalCloud"]
