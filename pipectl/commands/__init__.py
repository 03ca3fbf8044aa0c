"""The ``pipectl`` commands, one module per topic; each adds its commands with ``register(app, ...)``.

local       ``local up | down | status``: the local cloud
data        ``land``, ``etl``: landing files and the ETL state machine
training    ``train``, ``mlflow-ui``
promotion   ``promote``, ``approve``, ``reject``, ``rollback``, ``deployments``
serving     ``predict``: sample bookings priced through the API
scoring     ``score``: batch scoring of CSV or Parquet files
drift       ``drift``, ``replay``: the continuous-training loop
demo        ``demo``: all of the above, end to end
ops         ``health``, ``logs``, ``backup-db``, ``restore-db``, ``scale-serving``
"""
