-- Budgets owned by tenants, the budget ledger, live nodes and the webhook outbox.
-- Same shapes as the Postgres migration 0003; times are unix milliseconds.

CREATE TABLE budget_rules (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE budget_spend (
    budget        TEXT NOT NULL,
    scope         TEXT NOT NULL,
    win           TEXT NOT NULL,
    spent_micros  INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (budget, scope, win)
);

CREATE TABLE budget_holds (
    hold_id     INTEGER NOT NULL,
    budget      TEXT NOT NULL,
    scope       TEXT NOT NULL,
    win         TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (hold_id, budget, scope, win)
);
CREATE INDEX budget_holds_window ON budget_holds (budget, scope, win);

CREATE TABLE budget_alerts (
    budget      TEXT NOT NULL,
    scope       TEXT NOT NULL,
    win         TEXT NOT NULL,
    marker      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (budget, scope, win, marker)
);

CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    hostname    TEXT NOT NULL,
    version     TEXT NOT NULL,
    roles       TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL,
    tenant           TEXT NOT NULL,
    job_id           TEXT,
    url              TEXT NOT NULL,
    event            TEXT NOT NULL,
    payload          TEXT,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    locked_until     INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant, status, id);

-- The outbox row is written in the transaction that finishes the job.
CREATE TRIGGER job_history_webhook AFTER INSERT ON job_history
    WHEN NEW.webhook_url IS NOT NULL
BEGIN
    INSERT INTO webhook_deliveries (delivery_id, tenant, job_id, url, event, next_attempt_at, created_at)
    VALUES (lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
            substr(lower(hex(randomblob(2))), 2) || '-' ||
            substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-' ||
            lower(hex(randomblob(6))),
            NEW.tenant, NEW.id, NEW.webhook_url, 'job.' || NEW.state, NEW.finished_at, NEW.finished_at);
END;
