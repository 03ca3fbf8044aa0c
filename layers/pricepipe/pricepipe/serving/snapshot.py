"""The API function under SnapStart: what its init leaves in the snapshot, and what runs after a restore.

With SnapStart (``pricepipe:snapStart``, infrastructure/stacks/config.py) Lambda runs the function's
init once per published version, snapshots the execution environment, and resumes every new
environment of that version from the snapshot ("Improving startup performance with Lambda
SnapStart", AWS Lambda Developer Guide). Whatever init made is then shared by all of them, so it must
hold nothing meant to be unique ("Handling uniqueness with Lambda SnapStart"). What was checked in
``functions/api/app.py``'s init and what it imports:

- unique ids and secrets: none are made at init. A request's id is API Gateway's or Lambda's, else
  ``os.urandom`` at the request (the kernel's generator, not a seeded one);
- connections: none are open. The model is read from its layer on disk, a bundled contract from the
  package; a contract kept in S3 is read once at init through a boto3 client that is dropped
  afterwards (nothing calls AWS after init, so no pooled connection or credential outlives it);
- time: no timestamp is taken at init. Metric series are stamped when first counted (a request), and
  the prediction log and EMF lines when written;
- Powertools: its logger samples debug logs with ``random`` at init only when
  ``POWERTOOLS_LOGGER_SAMPLE_RATE`` is set, which no stack sets. The cold-start flags (Powertools'
  and ``app._cold``) are True in the snapshot, so each restored environment reports its first
  invocation as a cold start, which it is;
- pseudo-random generators: nothing on the serving path draws from ``random`` or numpy's global
  generator, but a dependency may, and both are seeded once per process: restored from one
  snapshot they would repeat the same numbers in every environment. :func:`reseed` gives each
  restored environment its own state, as AWS advises, from a runtime hook;
- the string hash seed (``PYTHONHASHSEED``) is fixed in the snapshot and cannot change in a running
  process; it stays unknown outside it, which is what hash randomisation needs.

The hooks come from AWS's ``snapshot_restore_py``, which the Python managed runtimes include ("Lambda
SnapStart runtime hooks for Python"); it is not shipped in a layer. Where it is missing (a server,
tests without it) there is no snapshot and nothing to register.
"""

from __future__ import annotations

import sys


def reseed() -> None:
    """New state, from the OS's entropy, for the pseudo-random generators a dependency may have seeded
    at init: Python's ``random`` and numpy's legacy global generator, each only if it was imported."""
    random = sys.modules.get("random")
    if random is not None:
        random.seed()  # None: from os.urandom
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # None: from the OS's entropy


def register_restore_hooks() -> bool:
    """Run :func:`reseed` after every restore from a snapshot; False where the runtime has no hooks."""
    try:
        from snapshot_restore_py import register_after_restore
    except ImportError:
        return False
    register_after_restore(reseed)
    return True
