-- Promotion runs (infrastructure/statemachines/promotion.asl.json), one row per execution.
--
-- The row is the promotion's lock: at most one runs per model, because two runs moving the same
-- alias would undo each other's traffic split. It also holds the manual strategy's pending approval:
-- the Step Functions task token that `pipectl approve` / `pipectl reject` answer. A token is a
-- credential to resume the execution, so it lives here (the database is private) and never in logs.
CREATE TABLE model_registry.promotions (
    id                    bigserial PRIMARY KEY,
    execution_arn         text NOT NULL UNIQUE,
    model_name            text NOT NULL,
    version               text NOT NULL,
    strategy              text NOT NULL CHECK (strategy IN ('manual', 'auto', 'canary', 'blue-green')),
    status                text NOT NULL DEFAULT 'running'
                          CHECK (status IN ('running', 'promoted', 'rolled-back', 'rejected', 'failed', 'unchanged')),
    reason                text,
    function_version      text,
    outcome               text,
    plan                  jsonb NOT NULL DEFAULT '{}',
    task_token            text,
    approval_status       text CHECK (approval_status IN ('pending', 'approved', 'rejected', 'expired')),
    approval_requested_at timestamptz,
    approval_expires_at   timestamptz,
    approval_decided_at   timestamptz,
    approval_decided_by   text,
    approval_reason       text,
    started_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz
);
CREATE UNIQUE INDEX promotions_one_running_per_model ON model_registry.promotions (model_name) WHERE status = 'running';
CREATE INDEX promotions_by_version ON model_registry.promotions (model_name, version, started_at DESC);
