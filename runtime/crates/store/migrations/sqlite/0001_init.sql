-- Sluice store schema (SQLite). Mirrors migrations/postgres; see docs/job-states.md.
-- Timestamps are INTEGER milliseconds since the Unix epoch; ids are hyphenated UUID text
-- (UUIDv7, so text order is creation order); JSON is TEXT.

CREATE TABLE components (
    digest      TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE plugins (
    tenant          TEXT NOT NULL,
    name            TEXT NOT NULL,
    active_version  INTEGER,
    next_version    INTEGER NOT NULL DEFAULT 1,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE plugin_versions (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    digest      TEXT NOT NULL REFERENCES components (digest),
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES plugins (tenant, name) ON DELETE CASCADE
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    plugin            TEXT NOT NULL,
    plugin_version    INTEGER NOT NULL,
    digest            TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('available', 'running')),
    priority          INTEGER NOT NULL DEFAULT 0,
    run_at            INTEGER NOT NULL,
    input             TEXT NOT NULL,
    tags              TEXT NOT NULL DEFAULT '{}',
    timeout_ms        INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    run               INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT,
    webhook_url       TEXT,
    worker_id         TEXT,
    lease_token       TEXT,
    lease_expires_at  INTEGER,
    attempted_at      INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    attempt_log       TEXT NOT NULL DEFAULT '[]',
    created_at        INTEGER NOT NULL
);
CREATE INDEX jobs_ready ON jobs (tenant, priority, run_at, id) WHERE state = 'available';
CREATE INDEX jobs_running ON jobs (tenant, plugin) WHERE state = 'running';

CREATE TABLE job_history (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    plugin            TEXT NOT NULL,
    plugin_version    INTEGER NOT NULL,
    digest            TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('completed', 'dead', 'cancelled')),
    priority          INTEGER NOT NULL,
    run_at            INTEGER NOT NULL,
    input             TEXT NOT NULL,
    tags              TEXT NOT NULL,
    timeout_ms        INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    run               INTEGER NOT NULL,
    idempotency_key   TEXT,
    webhook_url       TEXT,
    worker_id         TEXT,
    attempted_at      INTEGER,
    cancel_requested  INTEGER NOT NULL,
    attempt_log       TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    output            TEXT,
    error             TEXT,
    finished_at       INTEGER NOT NULL
);
CREATE INDEX job_history_tenant ON job_history (tenant, id);
CREATE INDEX job_history_finished ON job_history (finished_at);
CREATE INDEX job_history_dead ON job_history (tenant, plugin, id) WHERE state = 'dead';

CREATE TABLE idempotency_keys (
    tenant      TEXT NOT NULL,
    key         TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    body_hash   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE TABLE journal (
    job_id       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    response     TEXT NOT NULL,
    usage        TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE effects (
    job_id      TEXT NOT NULL,
    key         TEXT NOT NULL,
    result      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, key)
);

CREATE TABLE kv_state (
    tenant      TEXT NOT NULL,
    plugin      TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    expires_at  INTEGER,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, key)
);
CREATE INDEX kv_state_expires ON kv_state (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE usage_records (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id               TEXT,
    attempt              INTEGER NOT NULL,
    plugin               TEXT NOT NULL,
    tenant               TEXT NOT NULL,
    tags                 TEXT NOT NULL DEFAULT '{}',
    provider             TEXT NOT NULL,
    model                TEXT NOT NULL,
    input_tokens         INTEGER NOT NULL,
    output_tokens        INTEGER NOT NULL,
    cached_input_tokens  INTEGER NOT NULL,
    cost_micros          INTEGER NOT NULL,
    latency_ms           INTEGER NOT NULL,
    ttft_ms              INTEGER,
    source               TEXT NOT NULL,
    outcome              TEXT NOT NULL,
    created_at           INTEGER NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (created_at);
CREATE INDEX usage_records_tenant_time ON usage_records (tenant, created_at);
CREATE INDEX usage_records_job ON usage_records (job_id) WHERE job_id IS NOT NULL;

CREATE TABLE job_events (
    job_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    name         TEXT NOT NULL,
    scopes       TEXT NOT NULL DEFAULT '[]',
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
