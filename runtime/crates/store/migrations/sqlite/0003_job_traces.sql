-- The W3C trace context of a job's `job` span: same shape as the Postgres migration 0004.
CREATE TABLE job_traces (
    job_id       TEXT PRIMARY KEY,
    traceparent  TEXT NOT NULL CHECK (length(traceparent) = 55)
);
