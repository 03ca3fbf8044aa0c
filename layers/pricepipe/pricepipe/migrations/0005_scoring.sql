-- Batch scoring runs (infrastructure/statemachines/scoring.asl.json, pricepipe.scoring).
--
-- One row per run id, with what it scored and its totals: rows in = rows scored + rows rejected.
-- One row per part (a file, or a row range of a large one) once its predictions are written: a
-- rerun of the same run id skips the parts it finds here, so nothing is scored or written twice.
CREATE TABLE monitoring.scoring_runs (
    run_id          text PRIMARY KEY,
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    input_uri       text NOT NULL,
    interval_level  double precision CHECK (interval_level > 0 AND interval_level < 1),
    output_prefix   text NOT NULL,
    parts           integer NOT NULL,
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    rows_in         bigint NOT NULL DEFAULT 0,
    rows_scored     bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    parts_failed    integer NOT NULL DEFAULT 0,
    execution       text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT scoring_run_rows_accounted_for CHECK (rows_in = rows_scored + rows_rejected)
);

CREATE TABLE monitoring.scoring_parts (
    run_id         text NOT NULL REFERENCES monitoring.scoring_runs (run_id) ON DELETE CASCADE,
    part_id        text NOT NULL,
    source_bucket  text NOT NULL,
    source_key     text NOT NULL,
    source_etag    text NOT NULL,
    range_unit     text NOT NULL CHECK (range_unit IN ('file', 'bytes', 'row_groups')),
    range_start    bigint NOT NULL,
    range_end      bigint NOT NULL,
    status         text NOT NULL CHECK (status IN ('scored', 'rejected')),
    rows_in        bigint NOT NULL,
    rows_scored    bigint NOT NULL,
    rows_rejected  bigint NOT NULL,
    output_key     text,
    rejected_key   text,
    reason         text,
    finished_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, part_id),
    CONSTRAINT scoring_part_rows_accounted_for CHECK (rows_in = rows_scored + rows_rejected)
);
