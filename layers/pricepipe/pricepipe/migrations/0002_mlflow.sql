-- MLflow's tracking and registry tables live in their own schema of the pipeline database: MLflow
-- connects with search_path=mlflow (pricepipe.registry.mlflow_uri_from_dsn) and creates and
-- upgrades its tables there itself, on first use, with its own Alembic history.
CREATE SCHEMA IF NOT EXISTS mlflow;
