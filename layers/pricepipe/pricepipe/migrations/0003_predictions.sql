-- The prediction log reaches monitoring.predictions through a CloudWatch Logs subscription, which
-- delivers at least once: a redelivered batch must add nothing. One row per request and record key
-- (the API refuses a key repeated within one request), so that pair identifies a prediction and the
-- writer inserts with ON CONFLICT DO NOTHING.
CREATE UNIQUE INDEX predictions_request_record ON monitoring.predictions (request_id, record_key);
