-- The W3C trace context of a job's `job` span (telemetry on only): written at submit, read
-- by each attempt and by the job's webhook deliveries, purged with the job's history.
-- A side table, not a `jobs` column: nothing is written or read when tracing is off.
CREATE TABLE job_traces (
    job_id       UUID PRIMARY KEY,
    traceparent  TEXT NOT NULL CHECK (length(traceparent) = 55)
);
