"""Where MLflow's store is: the pipeline database's DSN turned into a SQLAlchemy URI."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from pricepipe.registry import mlflow_uri_from_dsn


def test_a_tcp_dsn_keeps_its_host_and_port_and_searches_the_mlflow_schema() -> None:
    url = make_url(mlflow_uri_from_dsn("postgresql://postgres:secret@db.internal:6543/pricepipe?sslmode=require"))
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.internal",
        6543,
        "pricepipe",
        "postgres",
        "secret",
    )
    assert url.query["sslmode"] == "require" and url.query["options"] == "-csearch_path=mlflow"


def test_a_unix_socket_directory_stays_a_connection_parameter() -> None:
    # the embedded server's URL (pipectl.localcloud.postgres): its host is a directory, not a URL host
    url = make_url(mlflow_uri_from_dsn("postgresql://postgres:@/pricepipe?host=/tmp/state/pgdata"))
    assert url.host is None and url.database == "pricepipe"
    assert url.query["host"] == "/tmp/state/pgdata"
