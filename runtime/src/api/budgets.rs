//! `/v1/budgets`: a tenant's hard budgets. A rule set here is enforced by every node within a
//! few seconds (at once on the node that took the request): calls that would exceed it are
//! refused with `budget-exceeded` before any provider is asked.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sluice_store::{BudgetRecord, LedgerWindow};

use super::AppState;
use super::auth::{Principal, Scope};
use super::error::{ApiError, ApiResult};
use super::extract::{Json, Path};
use crate::node::budgets::{self, BudgetSpec};

fn usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn window_view(w: &LedgerWindow, limit_micros: u64) -> Value {
    let used = w.level.spent_micros + w.level.reserved_micros;
    json!({
        "scope": w.scope,
        "window": w.window,
        "spent_usd": usd(w.level.spent_micros),
        "reserved_usd": usd(w.level.reserved_micros),
        "remaining_usd": usd(limit_micros.saturating_sub(used)),
        "spent_micros": w.level.spent_micros,
        "reserved_micros": w.level.reserved_micros,
    })
}

async fn view(st: &AppState, rec: &BudgetRecord, windows: u32) -> ApiResult<Value> {
    let spec: Option<BudgetSpec> = serde_json::from_value(rec.spec.clone()).ok();
    let limit = spec
        .as_ref()
        .map(|s| (s.limit_usd * 1e6).round() as u64)
        .unwrap_or(0);
    // The gateway keeps a tenant's rule under `<tenant>/<name>` in the ledger.
    let ledger_name = format!("{}/{}", rec.tenant, rec.name);
    let spend = st.node.store.ledger_windows(&ledger_name, windows).await?;
    Ok(json!({
        "name": rec.name,
        "spec": rec.spec,
        "windows": spend.iter().map(|w| window_view(w, limit)).collect::<Vec<_>>(),
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }))
}

async fn find(st: &AppState, tenant: &str, name: &str) -> ApiResult<BudgetRecord> {
    st.node
        .store
        .list_budgets(Some(tenant))
        .await?
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| ApiError::not_found("budget", name))
}

/// Apply the change on this node now instead of at the next reload.
async fn reload(st: &AppState) {
    if let Err(e) = budgets::refresh(&st.node).await {
        tracing::warn!(error = %e, "reloading budgets after a change failed; the next reload retries");
    }
}

/// `GET /v1/budgets`
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let mut out = Vec::new();
    for rec in st.node.store.list_budgets(Some(&principal.tenant)).await? {
        out.push(view(&st, &rec, 10).await?);
    }
    Ok(axum::Json(json!({ "budgets": out })))
}

/// `GET /v1/budgets/{name}`
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let rec = find(&st, &principal.tenant, &name).await?;
    Ok(axum::Json(view(&st, &rec, 100).await?))
}

/// `PUT /v1/budgets/{name}`: create or replace.
pub(crate) async fn put(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Json(spec): Json<BudgetSpec>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    principal.require(Scope::Admin)?;
    spec.validate(&principal.tenant, &name).map_err(|reason| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-budget",
            "Invalid budget",
            reason,
        )
    })?;
    if let Some(w) = &spec.webhook {
        crate::webhooks::check_target(&st.node.config, &w.url).map_err(|reason| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-webhook",
                "Invalid webhook URL",
                reason,
            )
        })?;
    }
    let existed = find(&st, &principal.tenant, &name).await.is_ok();
    let spec_json = serde_json::to_value(&spec).map_err(ApiError::internal)?;
    let rec = st
        .node
        .store
        .put_budget(&principal.tenant, &name, &spec_json)
        .await?;
    reload(&st).await;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(view(&st, &rec, 10).await?)))
}

/// `DELETE /v1/budgets/{name}`: stop enforcing it (its spend history stays).
pub(crate) async fn delete(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Scope::Admin)?;
    if st
        .node
        .store
        .delete_budget(&principal.tenant, &name)
        .await?
    {
        reload(&st).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("budget", name))
    }
}
