-- Sluice store schema (Postgres). See docs/job-states.md for the state machine.
-- Names compared in claims and prefix scans use COLLATE "C": bytewise, fast, and the same
-- order SQLite uses.

CREATE TABLE components (
    digest      text PRIMARY KEY,
    bytes       bytea NOT NULL,
    size        bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plugins (
    tenant          text COLLATE "C" NOT NULL,
    name            text COLLATE "C" NOT NULL,
    active_version  bigint,
    next_version    bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

CREATE TABLE plugin_versions (
    tenant      text COLLATE "C" NOT NULL,
    name        text COLLATE "C" NOT NULL,
    version     bigint NOT NULL,
    digest      text NOT NULL REFERENCES components (digest),
    settings    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES plugins (tenant, name) ON DELETE CASCADE
);

-- The hot table: only waiting and running work. Finished jobs move to job_history in the
-- transaction that finishes them. fillfactor leaves room for HOT heartbeat updates.
CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    tenant            text COLLATE "C" NOT NULL,
    plugin            text COLLATE "C" NOT NULL,
    plugin_version    bigint NOT NULL,
    digest            text NOT NULL,
    state             text NOT NULL CHECK (state IN ('available', 'running')),
    priority          integer NOT NULL DEFAULT 0,
    run_at            timestamptz NOT NULL,
    input             jsonb NOT NULL,
    tags              jsonb NOT NULL DEFAULT '{}',
    timeout_ms        bigint NOT NULL,
    max_attempts      integer NOT NULL,
    attempt           integer NOT NULL DEFAULT 0,
    run               integer NOT NULL DEFAULT 0,
    idempotency_key   text,
    webhook_url       text,
    worker_id         text,
    lease_token       uuid,
    lease_expires_at  timestamptz,
    attempted_at      timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    attempt_log       jsonb NOT NULL DEFAULT '[]',
    created_at        timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);

-- The claim index: exactly the ready predicate and the per-tenant claim order. Its leading
-- tenant column also serves the round-robin skip scan over tenants with ready work.
CREATE INDEX jobs_ready ON jobs (tenant, priority, run_at, id) WHERE state = 'available';
-- Running jobs: concurrency-cap counts and the rescuer. lease_expires_at is deliberately not
-- indexed so heartbeats stay HOT updates.
CREATE INDEX jobs_running ON jobs (tenant, plugin) WHERE state = 'running';

CREATE TABLE job_history (
    id                uuid PRIMARY KEY,
    tenant            text COLLATE "C" NOT NULL,
    plugin            text COLLATE "C" NOT NULL,
    plugin_version    bigint NOT NULL,
    digest            text NOT NULL,
    state             text NOT NULL CHECK (state IN ('completed', 'dead', 'cancelled')),
    priority          integer NOT NULL,
    run_at            timestamptz NOT NULL,
    input             jsonb NOT NULL,
    tags              jsonb NOT NULL,
    timeout_ms        bigint NOT NULL,
    max_attempts      integer NOT NULL,
    attempt           integer NOT NULL,
    run               integer NOT NULL,
    idempotency_key   text,
    webhook_url       text,
    worker_id         text,
    attempted_at      timestamptz,
    cancel_requested  boolean NOT NULL,
    attempt_log       jsonb NOT NULL,
    created_at        timestamptz NOT NULL,
    output            jsonb,
    error             jsonb,
    finished_at       timestamptz NOT NULL
);
CREATE INDEX job_history_tenant ON job_history (tenant, id);
CREATE INDEX job_history_finished ON job_history (finished_at);
CREATE INDEX job_history_dead ON job_history (tenant, plugin, id) WHERE state = 'dead';

-- Idempotency keys outlive the hot row (the job may be in history), so they have their own
-- table; the primary key is the constraint that makes concurrent duplicates impossible.
CREATE TABLE idempotency_keys (
    tenant      text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    job_id      uuid NOT NULL,
    body_hash   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE TABLE journal (
    job_id       uuid NOT NULL,
    seq          integer NOT NULL,
    fingerprint  text NOT NULL,
    response     jsonb NOT NULL,
    usage        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE effects (
    job_id      uuid NOT NULL,
    key         text COLLATE "C" NOT NULL,
    result      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, key)
);

CREATE TABLE kv_state (
    tenant      text COLLATE "C" NOT NULL,
    plugin      text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    value       text NOT NULL,
    expires_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, plugin, key)
);
CREATE INDEX kv_state_expires ON kv_state (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE usage_records (
    id                   bigserial PRIMARY KEY,
    job_id               uuid,
    attempt              integer NOT NULL,
    plugin               text NOT NULL,
    tenant               text NOT NULL,
    tags                 jsonb NOT NULL DEFAULT '{}',
    provider             text NOT NULL,
    model                text NOT NULL,
    input_tokens         bigint NOT NULL,
    output_tokens        bigint NOT NULL,
    cached_input_tokens  bigint NOT NULL,
    cost_micros          bigint NOT NULL,
    latency_ms           integer NOT NULL,
    ttft_ms              integer,
    source               text NOT NULL,
    outcome              text NOT NULL,
    created_at           timestamptz NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (created_at);
CREATE INDEX usage_records_tenant_time ON usage_records (tenant, created_at);
CREATE INDEX usage_records_job ON usage_records (job_id) WHERE job_id IS NOT NULL;

CREATE TABLE job_events (
    job_id      uuid NOT NULL,
    seq         bigint NOT NULL,
    event       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant       text NOT NULL,
    name         text NOT NULL,
    scopes       jsonb NOT NULL DEFAULT '[]',
    secret_hash  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
