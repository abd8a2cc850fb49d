-- Budgets owned by tenants (set through the API), the shared budget ledger, live nodes, and
-- the webhook outbox.

-- A tenant's budget rules. `spec` is the gateway's budget rule (scope, tag, value, period,
-- limit, alerts, alert webhook) as JSON; the store does not interpret it.
CREATE TABLE budget_rules (
    tenant      text COLLATE "C" NOT NULL,
    name        text COLLATE "C" NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

-- Spend per budget window. A reservation locks the window rows (in key order, so concurrent
-- reservations cannot deadlock) and adds its holds in the same transaction.
CREATE TABLE budget_spend (
    budget        text COLLATE "C" NOT NULL,
    scope         text COLLATE "C" NOT NULL,
    win           text COLLATE "C" NOT NULL,
    spent_micros  bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, scope, win)
);

-- Money held by calls in flight. A hold expires, so a node that dies mid-call does not keep
-- a budget blocked.
CREATE TABLE budget_holds (
    hold_id     bigint NOT NULL,
    budget      text COLLATE "C" NOT NULL,
    scope       text COLLATE "C" NOT NULL,
    win         text COLLATE "C" NOT NULL,
    amount      bigint NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (hold_id, budget, scope, win)
);
CREATE INDEX budget_holds_window ON budget_holds (budget, scope, win);

-- Reserve `p_amount` in every window, or nothing: lock the windows in key order (callers pass
-- the keys sorted, so concurrent reservations cannot deadlock), check spent + unexpired holds
-- + amount against each limit, and add the holds. One round trip, so the windows stay locked
-- only for the server-side work. Returns (-1, 0, 0) when reserved, else the 0-based index of
-- the refusing window with its spent and held amounts.
CREATE FUNCTION sluice_budget_reserve(
    p_hold bigint, p_budgets text[], p_scopes text[], p_wins text[], p_limits bigint[],
    p_amount bigint, p_ttl_ms double precision
) RETURNS TABLE (refused integer, spent bigint, held bigint) LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    s bigint;
    h bigint;
BEGIN
    -- A busy tenant's window is one hot row: holding its lock through a WAL flush would cap
    -- its calls at the disk's flush rate. Not waiting for the flush risks, on a database crash,
    -- forgetting holds and spend of the last moments, which the durable usage records keep.
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO budget_spend (budget, scope, win)
    SELECT * FROM unnest(p_budgets, p_scopes, p_wins)
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM budget_spend
    WHERE (budget, scope, win) IN (SELECT * FROM unnest(p_budgets, p_scopes, p_wins))
    ORDER BY budget, scope, win FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_budgets, 1), 0) LOOP
        SELECT b.spent_micros INTO s FROM budget_spend b
        WHERE b.budget = p_budgets[i] AND b.scope = p_scopes[i] AND b.win = p_wins[i];
        SELECT coalesce(sum(x.amount), 0)::bigint INTO h FROM budget_holds x
        WHERE x.budget = p_budgets[i] AND x.scope = p_scopes[i] AND x.win = p_wins[i]
          AND x.expires_at > now();
        IF s + h + p_amount > p_limits[i] THEN
            RETURN QUERY SELECT i - 1, s, h;
            RETURN;
        END IF;
    END LOOP;
    INSERT INTO budget_holds (hold_id, budget, scope, win, amount, expires_at)
    SELECT p_hold, k.b, k.s, k.w, p_amount, now() + p_ttl_ms * interval '1 millisecond'
    FROM unnest(p_budgets, p_scopes, p_wins) AS k (b, s, w)
    ON CONFLICT DO NOTHING;
    RETURN QUERY SELECT -1, 0::bigint, 0::bigint;
END $$;

-- Drop hold `p_hold` and add `p_actual` to each window's spend; the levels after.
CREATE FUNCTION sluice_budget_settle(
    p_hold bigint, p_budgets text[], p_scopes text[], p_wins text[], p_actual bigint
) RETURNS TABLE (o_budget text, o_scope text, o_win text, o_spent bigint, o_held bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM budget_holds h WHERE h.hold_id = p_hold;
    RETURN QUERY
    WITH spent AS (
        INSERT INTO budget_spend AS b (budget, scope, win, spent_micros)
        SELECT k.b, k.s, k.w, p_actual FROM unnest(p_budgets, p_scopes, p_wins) AS k (b, s, w)
        ON CONFLICT (budget, scope, win) DO UPDATE
        SET spent_micros = b.spent_micros + EXCLUDED.spent_micros, updated_at = now()
        RETURNING b.budget, b.scope, b.win, b.spent_micros)
    SELECT p.budget::text, p.scope::text, p.win::text, p.spent_micros,
           coalesce((SELECT sum(h.amount) FROM budget_holds h
                     WHERE h.budget = p.budget AND h.scope = p.scope AND h.win = p.win
                       AND h.expires_at > now()), 0)::bigint
    FROM spent p;
END $$;

-- Alerts already sent, once per marker per window.
CREATE TABLE budget_alerts (
    budget      text COLLATE "C" NOT NULL,
    scope       text COLLATE "C" NOT NULL,
    win         text COLLATE "C" NOT NULL,
    marker      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, scope, win, marker)
);

-- Nodes announce themselves so limits shared by all nodes can be split between the live ones.
CREATE TABLE nodes (
    id          text PRIMARY KEY,
    hostname    text NOT NULL,
    version     text NOT NULL,
    roles       text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- The webhook outbox. A finished job with a webhook URL gets its delivery row in the same
-- statement that moves it to job_history (a CTE in each of those statements, not a trigger: a
-- trigger on job_history, row or statement level, cost 8-12 % of burn-down throughput even
-- when no job had a webhook), so no outcome is lost to a crash.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    delivery_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    tenant           text COLLATE "C" NOT NULL,
    job_id           uuid,
    url              text NOT NULL,
    event            text NOT NULL,
    payload          jsonb,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant, status, id);
