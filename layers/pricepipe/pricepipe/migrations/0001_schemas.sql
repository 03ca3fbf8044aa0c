-- The pipeline's schemas and the spec's tables. Dataset columns of price_data.raw_data and
-- price_data.processed_features come from the data contract (pricepipe.db.sync_dataset), so one
-- schema serves any price dataset.

CREATE SCHEMA IF NOT EXISTS price_data;
CREATE SCHEMA IF NOT EXISTS model_registry;
CREATE SCHEMA IF NOT EXISTS monitoring;

-- The dataset this database holds, with the contract its tables were built from.
CREATE TABLE price_data.datasets (
    name             text PRIMARY KEY,
    contract_version integer NOT NULL,
    contract         jsonb NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per landing file the ETL looked at: what came in and where every row went.
CREATE TABLE price_data.ingestion_ledger (
    id               bigserial PRIMARY KEY,
    run_id           text NOT NULL,
    dataset          text NOT NULL,
    source_bucket    text NOT NULL,
    source_key       text NOT NULL,
    source_etag      text NOT NULL,
    source_size      bigint,
    status           text NOT NULL CHECK (status IN ('loaded', 'rejected', 'failed')),
    rows_in          integer NOT NULL DEFAULT 0,
    rows_loaded      integer NOT NULL DEFAULT 0,
    rows_quarantined integer NOT NULL DEFAULT 0,
    rows_duplicate   integer NOT NULL DEFAULT 0,
    event_date_min   date,
    event_date_max   date,
    quarantine_key   text,
    lake_keys        text[] NOT NULL DEFAULT '{}',
    error            text,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT every_row_accounted_for
        CHECK (status = 'failed' OR rows_in = rows_loaded + rows_quarantined + rows_duplicate)
);
-- A file (bucket, key, content) is taken once; failed attempts may repeat.
CREATE UNIQUE INDEX ingestion_ledger_taken_once
    ON price_data.ingestion_ledger (source_bucket, source_key, source_etag)
    WHERE status IN ('loaded', 'rejected');
CREATE INDEX ingestion_ledger_run ON price_data.ingestion_ledger (run_id);

-- Rows as received and validated. _ingest_id names the ledger row that loaded them (not a foreign
-- key: a per-row trigger would halve bulk-load speed, and the two are written in one transaction).
CREATE TABLE price_data.raw_data (
    _ingest_id bigint NOT NULL
);

-- Engineered features of the same rows (key, event time, derived features, target). Features
-- that are raw columns unchanged stay in raw_data; the view price_data.model_features (created
-- with the contract's columns) joins both into model-ready rows, as written to the Parquet lake.
CREATE TABLE price_data.processed_features (
    _ingest_id bigint NOT NULL
);

-- Model versions the pipeline registered, mirrored from the MLflow registry.
CREATE TABLE model_registry.models (
    id                   bigserial PRIMARY KEY,
    model_name           text NOT NULL,
    version              text NOT NULL,
    run_id               text,
    dataset              text,
    stage                text NOT NULL DEFAULT 'none'
                         CHECK (stage IN ('none', 'challenger', 'champion', 'previous', 'archived', 'rejected')),
    metrics              jsonb NOT NULL DEFAULT '{}',
    params               jsonb NOT NULL DEFAULT '{}',
    data_window          jsonb NOT NULL DEFAULT '{}',
    artifact_uri         text,
    serving_artifact_uri text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_name, version)
);

-- Every change to what serves traffic: what changed, when, and why.
CREATE TABLE model_registry.deployments (
    id               bigserial PRIMARY KEY,
    model_name       text NOT NULL,
    version          text,
    previous_version text,
    action           text NOT NULL,
    strategy         text,
    traffic_percent  numeric(5, 2),
    function_version text,
    reason           text NOT NULL,
    actor            text NOT NULL DEFAULT 'pipeline',
    execution_arn    text,
    details          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_by_model ON model_registry.deployments (model_name, created_at DESC);

-- Every prediction served, with room for the actual price once it is known.
CREATE TABLE monitoring.predictions (
    id               bigserial PRIMARY KEY,
    request_id       text NOT NULL,
    record_key       text,
    model_name       text NOT NULL,
    model_version    text NOT NULL,
    function_version text,
    features         jsonb NOT NULL,
    prediction       double precision NOT NULL,
    predicted_at     timestamptz NOT NULL DEFAULT now(),
    actual           double precision,
    actual_at        timestamptz
);
CREATE INDEX predictions_by_key ON monitoring.predictions (record_key);
CREATE INDEX predictions_by_time ON monitoring.predictions (predicted_at);

-- One row per check and feature of every drift run.
CREATE TABLE monitoring.drift_metrics (
    id             bigserial PRIMARY KEY,
    check_id       text NOT NULL,
    checked_at     timestamptz NOT NULL DEFAULT now(),
    model_name     text,
    model_version  text,
    kind           text NOT NULL CHECK (kind IN ('feature', 'prediction', 'performance')),
    feature        text,
    metric         text NOT NULL,
    value          double precision NOT NULL,
    threshold      double precision,
    drifted        boolean NOT NULL,
    window_start   timestamptz,
    window_end     timestamptz,
    reference_rows integer,
    current_rows   integer
);
CREATE INDEX drift_metrics_by_check ON monitoring.drift_metrics (check_id);
CREATE INDEX drift_metrics_by_time ON monitoring.drift_metrics (checked_at);
