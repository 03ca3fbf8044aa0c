-- The audit trail (issue 14): every row of model_registry.deployments says who acted, and how that
-- is known. `actor` is who: an IAM principal's ARN (pipectl asks STS GetCallerIdentity), the API
-- token's client once the API takes OAuth tokens, the Step Functions execution that started a
-- promotion, or "pipeline" for the flow's own decisions. `actor_source` is how:
--   iam         the caller's STS GetCallerIdentity ARN, sent by pipectl
--   token       the client id of a verified API token
--   execution   the parent execution's ARN (AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID)
--   pipeline    a decision of the flow itself (a canary verdict, a stale lock released)
--   local-user  the operating-system user on the local cloud (nothing verifies it)
--   unverified  rows written before this migration, or a request naming an actor without a source
-- The caller sends its identity; CloudTrail (the stacks' `audit_trail` option) records the principal
-- that really invoked the function or started the execution, to check a row against.
ALTER TABLE model_registry.deployments
    ADD COLUMN actor_source text NOT NULL DEFAULT 'unverified'
        CHECK (actor_source IN ('iam', 'token', 'execution', 'pipeline', 'local-user', 'unverified'));
ALTER TABLE model_registry.promotions
    ADD COLUMN requested_by        text,
    ADD COLUMN requested_by_source text,
    ADD COLUMN approval_decided_by_source text;
