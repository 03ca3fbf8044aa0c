-- monitoring.predictions partitioned by month of predicted_at (pricepipe.partitions), so a month of
-- the log is one table: retention drops it whole instead of deleting rows one by one (no bloat, no
-- vacuum debt), and a query over a window reads only its months.
--
-- Conversion of an existing table without losing a row, in this migration's one transaction: the
-- rows move into the new table's DEFAULT partition here, then pricepipe.db.migrate splits them into
-- month partitions (pricepipe.partitions.settle, the same code the writer and the retention step
-- use). LIKE copies whatever columns the table has by now, so later column additions carry over.
--
-- PostgreSQL requires the partition key in every unique index of a partitioned table: the primary
-- key becomes (id, predicted_at), and the writer's dedupe index (request_id, record_key,
-- predicted_at). That keeps its meaning: every row of one request carries the request's single
-- predicted_at (one predicted_at_ms per request, repeated on each part of a split request), so a
-- redelivered row still collides with its first copy, and two requests never share a request id.
ALTER TABLE monitoring.predictions RENAME TO predictions_unpartitioned;

CREATE TABLE monitoring.predictions (LIKE monitoring.predictions_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (predicted_at);
-- Rows of a month with no partition yet land here instead of failing; settle() moves them out.
CREATE TABLE monitoring.predictions_default PARTITION OF monitoring.predictions DEFAULT;

INSERT INTO monitoring.predictions SELECT * FROM monitoring.predictions_unpartitioned;

ALTER SEQUENCE monitoring.predictions_id_seq OWNED BY monitoring.predictions.id;
DROP TABLE monitoring.predictions_unpartitioned;

ALTER TABLE monitoring.predictions ADD CONSTRAINT predictions_pkey PRIMARY KEY (id, predicted_at);
CREATE UNIQUE INDEX predictions_request_record ON monitoring.predictions (request_id, record_key, predicted_at);
CREATE INDEX predictions_by_key ON monitoring.predictions (record_key);
CREATE INDEX predictions_by_time ON monitoring.predictions (predicted_at);
