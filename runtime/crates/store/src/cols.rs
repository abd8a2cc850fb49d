//! Column lists both backends' queue statements share (`jobs` and `job_history` hold the same
//! columns in one order). Macros, so statements can `concat!` them into `&'static str`.

/// Columns shared by `jobs` and `job_history`, in one order.
macro_rules! common_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, state, priority, run_at, input, tags, \
         timeout_ms, max_attempts, attempt, run, idempotency_key, webhook_url, worker_id, \
         attempted_at, cancel_requested, attempt_log, created_at"
    };
}

/// `common_cols!` except `state`, for inserting into history with a new state.
macro_rules! hist_insert_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, priority, run_at, input, tags, timeout_ms, \
         max_attempts, attempt, run, idempotency_key, webhook_url, worker_id, attempted_at, \
         cancel_requested, created_at"
    };
}
